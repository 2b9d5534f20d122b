"""``fw upload`` and ``fw export``: share a trained model (Ludwig's ``ludwig upload`` flags, short forms included).

    fw upload hf_hub --repo_id OWNER/NAME --model_path results/exp_run/model [--private] [--revision BRANCH]
    fw export --model_path results/exp_run/model --output served/ [--merge] [--dtype bfloat16]

Only argparse here: the verbs import fw.publish (huggingface_hub, torch) when they run.
"""
from __future__ import annotations

import argparse

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


def boolean(value: str) -> bool:
    """``--private`` alone, or with a value as Ludwig takes it (``--private True``)."""
    if value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def cmd_upload(args: argparse.Namespace) -> int:
    from fw.console import say
    from fw.publish.upload import upload

    result = upload(args.repo_id, args.model_path, private=args.private, repo_type=args.repo_type,
                    commit_message=args.commit_message, commit_description=args.commit_description,
                    revision=args.revision)
    say(f"✓ uploaded {result.files} files to {result.repo_url}" + (" (private)" if args.private else ""), "green",
        err=False)
    say(f"  commit: {result.commit_url}", err=False)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fw.console import say
    from fw.publish.export import export

    output = export(args.model_path, args.output, merge=args.merge, dtype=args.dtype, adapter=args.adapter,
                    max_shard_size=args.max_shard_size)
    say(f"✓ standalone model in {output} (loads with transformers alone; see its README.md)", "green", err=False)
    return 0


def register(verbs) -> None:
    from fw.publish.export import DEFAULT_MAX_SHARD_SIZE, DTYPES
    from fw.publish.upload import DEFAULT_COMMIT_MESSAGE, REPO_TYPES, SERVICES

    text = "Upload a trained model to the Hugging Face Hub (creates the repository if needed)."
    upload = verbs.add_parser("upload", help=text, description=text)
    upload.set_defaults(handler=cmd_upload)
    upload.add_argument("service", choices=SERVICES, help="where to upload: hf_hub (the Hugging Face Hub)")
    upload.add_argument("-r", "--repo_id", required=True, help="OWNER/NAME of the repository")
    upload.add_argument("-m", "--model_path", required=True,
                        help="a model saved by fw train (results/<experiment>_<run>/model) or fw export")
    upload.add_argument("-p", "--private", nargs="?", const=True, default=False, type=boolean,
                        help="make a new repository private")
    upload.add_argument("-t", "--repo_type", default="model", choices=REPO_TYPES, help="default model")
    upload.add_argument("-c", "--commit_message", default=DEFAULT_COMMIT_MESSAGE, help="the commit's title")
    upload.add_argument("-d", "--commit_description", default=None, help="the commit's description")
    upload.add_argument("--revision", default=None, metavar="BRANCH",
                        help="upload to this branch (created from main if needed) instead of main")

    text = "Write a standalone model (merged weights or the adapter) that servers load without fw."
    export = verbs.add_parser("export", help=text, description=text)
    export.set_defaults(handler=cmd_export)
    export.add_argument("--model_path", required=True, help="a model saved by fw train")
    export.add_argument("--output", required=True, help="a new (or empty) directory")
    export.add_argument("--merge", action="store_true",
                        help="merge the adapter into the base model's weights (servers then need no adapter support)")
    export.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="precision of the exported weights (default: the precision fw runs the model in)")
    export.add_argument("--adapter", default=None, metavar="NAME",
                        help="with several named adapters: the one to export (default adapters.active)")
    export.add_argument("--max_shard_size", default=DEFAULT_MAX_SHARD_SIZE,
                        help=f"largest weights file; bigger models are sharded (default {DEFAULT_MAX_SHARD_SIZE})")
