"""Configuration of `med42-ray prepare`: the sources of the mixture and every pipeline knob."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from med42_ray.data.template import MED42_SYSTEM_PROMPT
from med42_ray.strict_model import StrictModel, require_unique


class SourceConfig(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="short name used in ids and the manifest")
    path: str = Field(..., description="a file, a glob of files, a directory or a datasets save_to_disk folder, "
                                       "local or under a URI (s3://bucket/dir/*.jsonl, gs://..., any pyarrow filesystem)")
    format: str = Field(..., description="reader to use; see `med42_ray.data.readers.READERS`")
    weight: float = Field(1.0, ge=0, description="<1 samples that fraction, >1 repeats (2.5 = 2 copies + half a third)")
    domain: Literal["medical", "general"] = "medical"

    @field_validator("path")
    @classmethod
    def _no_secret_in_uri(cls, v: str) -> str:
        from urllib.parse import urlsplit

        from med42_ray.data.filesystems import is_uri

        if is_uri(v) and urlsplit(v).password is not None:
            raise ValueError("the URI holds a password, and the path is written to the manifest as given; "
                             "give credentials through the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                             "GOOGLE_APPLICATION_CREDENTIALS, ...) instead")
        return v

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from med42_ray.data.readers import READERS  # late: readers import heavy parsers

        if v not in READERS:
            raise ValueError(f"unknown format {v!r}; known: {', '.join(sorted(READERS))}")
        return v


class PrepareConfig(StrictModel):
    sources: list[SourceConfig] = Field(default_factory=list)
    benchmarks_dir: str = Field("pkg://sample/data/benchmarks",
                                description="root laid out like shared/data/raw: the benchmarks to decontaminate against")
    benchmarks: list[str] | None = Field(None, description="benchmark names to index (None: every one in the registry)")
    ngram: int = Field(13, ge=3, le=50, description="word n-gram length for decontamination")
    template: Literal["med42", "tokenizer"] = Field("med42", description="Med42's prompt template or the tokenizer's chat template")
    system_prompt: str | None = Field(MED42_SYSTEM_PROMPT, description="system message added when a record has none")
    tokenizer: str | None = Field(None, description="tokenizer to use (None: the run's model)")
    seq_len: int = Field(4096, ge=16, description="packed sequence length")
    overlong: Literal["split", "reject"] = Field("split", description="what to do with a document longer than seq_len")
    pack_window: int = Field(2048, ge=1, description="documents considered together when bin-packing")
    rows_per_shard: int = Field(2048, ge=1, description="packed sequences per Parquet shard")
    output_dir: str | None = Field(None, description="where to write shards (None: <run_dir>/prepared)")

    @model_validator(mode="after")
    def _unique_names(self) -> "PrepareConfig":
        require_unique([s.name for s in self.sources], "source")
        return self
