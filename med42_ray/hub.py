"""`med42-ray push`: an exported model to the Hugging Face Hub, through huggingface_hub's HfApi.

Before the upload, the export's model card is written again with the evaluations of that export
found under the run directory (its `model-index`), under the repository's name. The token and the
endpoint are huggingface_hub's own: HF_TOKEN or `hf auth login`, HF_ENDPOINT.
"""

from __future__ import annotations

from pathlib import Path

from med42_ray import model_card
from med42_ray.errors import ConfigError, RunError


def push(export_dir: Path, repo_id: str, eval_roots: list[Path], *, private: bool = False,
         revision: str | None = None, commit_message: str | None = None, endpoint: str | None = None) -> str:
    """Create `repo_id` (if new) and upload `export_dir` to it; returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HTTPError,  # huggingface_hub's HTTP client's errors, its own among them
    )

    export_dir = Path(export_dir)
    try:
        facts = model_card.read_facts(export_dir)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    model_card.write_card(export_dir, facts["export"], eval_roots, model_name=repo_id.rsplit("/", 1)[-1])
    api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=export_dir, revision=revision,
                                   commit_message=commit_message or f"med42-ray export ({facts['export']}) "
                                                                    f"of {facts['base_model']}")
    except (HTTPError, OSError, ValueError) as e:  # ValueError: the Hub refused the card's metadata
        raise RunError(f"push {export_dir} to {api.endpoint}/{repo_id} failed: {type(e).__name__}: {e}") from None
    return commit.commit_url
