"""Ray Data Parquet reads that leave no failed tasks and no killed actors on the dashboard.

Ray Data's default Parquet reader (DataSourceV2, Ray 2.60) lists files by reading their footers on
a pool of `FooterReader` actors: RAY_DATA_PARQUET_FOOTER_NUM_ACTORS, 32 by default, started for
every read and every epoch, then `ray.kill`ed once listing is done. On a small cluster most are
killed before they even start, so each read shows ~30 failed `FooterReader.__init__` tasks and 32
dead actors: red on the dashboard of a run that went fine. The V1 reader, which Ray still ships
behind `DataContext.use_datasource_v2`, reads footers in the read tasks themselves and samples a
few files in plain tasks that finish normally. Our reads are whole directories of files we wrote
ourselves, without predicate push-down into listing, so V2's footer index gains us nothing.
"""

from __future__ import annotations


def read_parquet(paths: str | list[str]):
    """`ray.data.read_parquet(paths)` through the V1 reader (the flag is read when the dataset is
    built, so it is set only for that call and this driver's other reads are left alone)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths)
    finally:
        ctx.use_datasource_v2 = before
