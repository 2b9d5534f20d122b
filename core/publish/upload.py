"""``fw upload hf_hub``: a saved model directory to a Hugging Face Hub repository (Ludwig's ``ludwig upload``).

    fw upload hf_hub --repo_id OWNER/NAME --model_path results/exp_run/model [--private] [--revision BRANCH]

Everything a user can get wrong is refused in one line before any network call: a directory that is not a model
saved by fw (``fw train`` or ``fw export``), an invalid repository id (huggingface_hub's own validator), no token.
The token comes from ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` or the saved ``hf auth login``
(``huggingface_hub.get_token``); it goes to ``HfApi`` only and is never printed, logged or written.
Then, through ``huggingface_hub.HfApi``: the model card is refreshed (snippets naming the repository, the latest
evaluation figures), the repository is created if needed (``create_repo(exist_ok=True)``), the ``--revision``
branch too, and the directory goes up in one commit (``upload_folder``).

The CLI imports this module for the options of ``fw upload``: the model card is imported when it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fw import artifacts, console
from fw.errors import FwError
from fw.plugin.models import library_message

SERVICES = ("hf_hub",)
REPO_TYPES = ("model", "dataset", "space")
DEFAULT_COMMIT_MESSAGE = "Upload a model trained with fw"
TOKEN_HELP = ("set HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) to a token with write access "
              "(https://huggingface.co/settings/tokens), or log in once with `hf auth login`")


@dataclass(frozen=True)
class Uploaded:
    repo_url: str
    commit_url: str
    files: int


def upload(repo_id: str, model_path, private: bool = False, repo_type: str = "model",
           commit_message: str | None = None, commit_description: str | None = None,
           revision: str | None = None) -> Uploaded:
    """Create ``repo_id`` if needed and upload the model directory of ``model_path`` to it in one commit."""
    model_dir = saved_fw_model(model_path)
    check_repo_id(repo_id)
    check_repo_type(repo_type)
    token = hub_token()
    refresh_card(model_dir, repo_id)
    if (model_dir / "retrieval").is_dir() and not private:
        console.warn(f"{model_dir}/retrieval holds training rows (the few-shot examples index): they become public "
                     "with the model. Pass --private to keep the repository private.")
    try:
        return send(model_dir, token, repo_id, private, repo_type, commit_message or DEFAULT_COMMIT_MESSAGE,
                    commit_description, revision)
    except FwError:
        raise
    except Exception as exc:  # any library / network failure becomes one line, the token scrubbed from it
        raise FwError(failure_message(exc, repo_id).replace(token, "***")) from None


# -- checks before any network call -------------------------------------------------------------------------------
def saved_fw_model(model_path) -> Path:
    model_dir = artifacts.find_model_dir(model_path)
    if not (model_dir / artifacts.MODEL_CONFIG_FILE).is_file():
        raise FwError(f"--model_path: '{model_path}' is not a model saved by fw (no {artifacts.MODEL_CONFIG_FILE} "
                      "in it). Give the model/ folder of an fw train run, or a directory written by fw export.")
    return model_dir


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise FwError(f"--repo_id: {exc} Write OWNER/NAME, e.g. my-name/my-model.") from None


def check_repo_type(repo_type: str) -> None:
    if repo_type == "space":
        raise FwError("--repo_type: a Space runs an app, it does not hold a model for others to load; upload to a "
                      "model repository (--repo_type model, the default).")
    if repo_type not in REPO_TYPES:
        raise FwError(f"--repo_type: '{repo_type}' is not one of {', '.join(REPO_TYPES)}.")


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise FwError(f"no Hugging Face token: {TOKEN_HELP}.")
    return token


def refresh_card(model_dir: Path, repo_id: str) -> None:
    from fw.publish.card import run_directory_of, write_model_card

    write_model_card(model_dir, artifacts.saved_config(model_dir), run_dir=run_directory_of(model_dir),
                     repo_id=repo_id)


# -- the upload ---------------------------------------------------------------------------------------------------
def send(model_dir: Path, token: str, repo_id: str, private: bool, repo_type: str, commit_message: str,
         commit_description: str | None, revision: str | None) -> Uploaded:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), repo_type=repo_type, revision=revision,
                               commit_message=commit_message, commit_description=commit_description)
    files = sum(1 for path in model_dir.rglob("*") if path.is_file())
    return Uploaded(str(repo), str(getattr(commit, "commit_url", commit)), files)


def failure_message(exc: BaseException, repo_id: str) -> str:
    """One line for a failed create / upload."""
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(exc, "response", None), "status_code", None) if isinstance(exc, HfHubHTTPError) else None
    if status == 401:
        return f"the Hugging Face Hub rejected the token: {TOKEN_HELP}."
    if status == 403:
        return (f"the token may not write to '{repo_id}': it is read-only, or its owner is not a member of "
                f"'{repo_id.split('/')[0]}'. Use a token with write access to that namespace.")
    if status is None and not isinstance(exc, HfHubHTTPError) and "connect" in str(exc).lower():
        return "cannot reach the Hugging Face Hub (offline?): connect and run fw upload again."
    return f"uploading to '{repo_id}' failed: {library_message(exc)}"
