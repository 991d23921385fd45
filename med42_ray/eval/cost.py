"""What answering questions costs each evaluated model: questions/s, ms per question, peak memory.

The evaluation pass's own rate (results.json `questions_per_second`) includes starting the actors
and loading the models, spread over however many actors ran; it is what the pass took, not what a
model costs to serve. So when a model's questions are all answered, one of its actors (its other
actors idle by then) answers the same first `evaluate.cost_questions` distinct questions of the
headline protocol again, in the pass's tasks, timed after one untimed task: the same measurement
for every model, with no second model load. A model with an adapter is measured twice, as
evaluated (peft, unmerged) and then merged into its base in that actor (peft's merge_and_unload):
what serving it either way costs. Results go to results.json's `inference_cost` ({model:
{variant: figures}}); the report puts them beside the accuracy.
"""

from __future__ import annotations

from typing import Sequence

# Variants: a model without an adapter is measured as it is; with one, both ways.
AS_IS, UNMERGED, MERGED = "model", "unmerged", "merged"


def variants(adapter: str | None) -> tuple[str, ...]:
    return (UNMERGED, MERGED) if adapter else (AS_IS,)


def measure_on(actor, tasks: Sequence[Sequence], adapter: str | None) -> dict[str, dict]:
    """{variant: figures} from one of a model's scoring actors, its evaluation done: the tasks
    timed as they are, then (an adapter) again after merging it into the base in that actor."""
    import ray

    return {v: with_rates(ray.get(actor.measure.remote(tasks, merge=v == MERGED))) for v in variants(adapter)}


def with_rates(figures: dict) -> dict:
    n, s = figures["questions"], figures["seconds"]
    return {**figures, "questions_per_s": n / s if s else None, "ms_per_question": 1000 * s / n if n else None}


def first_questions(requests: dict[str, list], n: int) -> list:
    """The first `n` distinct requests over the benchmarks in order, round-robin, so that every
    benchmark's prompt lengths are in the sample (a sample of one benchmark says little of another)."""
    out, seen = [], set()
    queues = [list(pairs) for pairs in requests.values()]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                r = q.pop(0)[1]
                if r.key not in seen:
                    seen.add(r.key)
                    out.append(r)
    return out
