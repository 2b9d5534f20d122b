"""`fw preview CONFIG --dataset D -n 3`: users see the prompts and targets the model will see."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fw.cli.main import main

CONFIG = """
base_model: {base_model}
input_features: [{{name: prompt, type: text}}]
output_features: [{{name: answer, type: text}}]
prompt:
  template: "Q: {{question}} A:"
"""
DATA = "question,answer\nWhy is the sky blue?,Rayleigh scattering\n,orphan\nWhat is 2+2?,4\nLast one?,yes\n"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from fw.model.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("preview-tokenizer")
    build_tokenizer(path)
    return path


def files(tmp_path: Path, base_model: str = "meta-llama/Llama-2-7b-hf", data: str = DATA,
          template: str = "Q: {question} A:") -> tuple[str, str]:
    config, dataset = tmp_path / "config.yaml", tmp_path / "data.csv"
    config.write_text(CONFIG.format(base_model=base_model).replace("Q: {question} A:", template))
    dataset.write_text(data)
    return str(config), str(dataset)


def test_preview_prints_prompts_and_targets_of_the_first_rows(tmp_path, capsys):
    config, dataset = files(tmp_path)
    assert main(["preview", config, "--dataset", dataset, "-n", "2"]) == 0
    captured = capsys.readouterr()
    assert "row 1 · prompt" in captured.out and "Q: Why is the sky blue? A:" in captured.out
    assert "row 1 · target" in captured.out and "Rayleigh scattering" in captured.out
    assert "row 3 · prompt" in captured.out and "Q: What is 2+2? A:" in captured.out  # row 2 has no input
    assert "Last one?" not in captured.out
    assert "3 row(s) in" in captured.out and "showing 2." in captured.out
    assert "dropped 1 of 4 row(s) with no input text (empty 'question'): row 2." in captured.err


def test_preview_with_a_tokenizer_shows_token_counts_and_the_truncation_report(tmp_path, capsys, tokenizer_dir):
    config, dataset = files(tmp_path)
    assert main(["preview", config, "--dataset", dataset, "-n", "1", "--tokenizer", str(tokenizer_dir)]) == 0
    out = capsys.readouterr().out
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt, target = (len(tokenizer(text)["input_ids"])
                      for text in ("Q: Why is the sky blue? A:", "Rayleigh scattering"))
    assert f"── row 1 · {prompt + target + 1} tokens, {target + 1} carry the loss ──" in out
    assert "Q: Why is the sky blue? A:Rayleigh scattering</s>" in out  # the exact token sequence, EOS included
    assert 'loss on: "Rayleigh scattering</s>"' in out
    assert "truncation: 0 of 3 rows truncated; input 0 (no limit), output 0 (no limit), global 0 (max 256 " \
           "tokens)" in out


def test_preview_never_cuts_or_wraps_long_lines_when_piped(tmp_path):
    long_question = "why " * 60 + "is that so?"
    config, dataset = files(tmp_path, data=f"question,answer\n{long_question},because\n")
    done = subprocess.run([sys.executable, "-m", "fw.cli.main", "preview", config, "--dataset", dataset],
                          capture_output=True, text=True, check=True)
    assert f"Q: {long_question} A:" in done.stdout.splitlines()


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def test_preview_with_a_chat_template_shows_the_templated_text_and_each_trained_turn(tmp_path, capsys,
                                                                                   tokenizer_dir):
    import json

    config, dataset = files(tmp_path, data="")
    text = Path(config).read_text().replace('  template: "Q: {question} A:"', "  chat_template: " +
                                            json.dumps(CHAT_TEMPLATE))
    Path(config).write_text(text.replace("name: prompt,", "name: messages,"))
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
    Path(dataset).write_text(json.dumps({"messages": conversation}) + "\n")
    Path(dataset).rename(Path(dataset).with_suffix(".jsonl"))
    assert main(["preview", config, "--dataset", str(Path(dataset).with_suffix(".jsonl")),
                 "--tokenizer", str(tokenizer_dir)]) == 0
    out = capsys.readouterr().out
    assert "<s>user: Hi</s><s>assistant: Hello</s><s>user: Bye</s><s>assistant: Ciao</s>" in out
    assert 'loss on: "Hello</s>" · "Ciao</s>"' in out


def test_preview_of_a_chat_template_needs_a_tokenizer(tmp_path, capsys):
    config, dataset = files(tmp_path)
    Path(config).write_text(Path(config).read_text() + "  chat_template: true\n")
    assert main(["preview", config, "--dataset", dataset]) == 1
    assert "fw preview: prompt.chat_template renders through the tokenizer; give --tokenizer" in capsys.readouterr().err


def test_preview_uses_a_local_base_model_as_tokenizer(tmp_path, capsys, tokenizer_dir):
    config, dataset = files(tmp_path, base_model=str(tokenizer_dir))
    assert main(["preview", config, "--dataset", dataset]) == 0
    assert "truncation: 0 of 3 rows truncated" in capsys.readouterr().out


def test_preview_without_the_output_column_shows_prompts_only(tmp_path, capsys):
    config, dataset = files(tmp_path, data="question\nfirst?\nsecond?\n")
    assert main(["preview", config, "--dataset", dataset]) == 0
    out = capsys.readouterr().out
    assert "Q: first? A:" in out and "Q: second? A:" in out and "target" not in out


def test_preview_missing_dataset_is_one_error_line(tmp_path, capsys):
    config, _ = files(tmp_path)
    assert main(["preview", config, "--dataset", str(tmp_path / "nope.csv")]) == 1
    assert capsys.readouterr().err.strip() == f"error: dataset file not found: {tmp_path / 'nope.csv'}"


def test_preview_unknown_template_column(tmp_path, capsys):
    config, dataset = files(tmp_path, template="Q: {questoin}")
    assert main(["preview", config, "--dataset", dataset]) == 1
    assert capsys.readouterr().err.strip() == ("error: prompt.template names column 'questoin' that the dataset "
                                               "does not have. Columns: question, answer. Did you mean 'question'?")


def test_preview_invalid_config(tmp_path, capsys):
    config, dataset = files(tmp_path)
    Path(config).write_text(Path(config).read_text().replace("type: text}]\noutput", "type: txt}]\noutput"))
    assert main(["preview", config, "--dataset", dataset]) == 1
    assert "input_features[0].type" in capsys.readouterr().err


def test_preview_needs_a_positive_row_count(tmp_path, capsys):
    config, dataset = files(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(["preview", config, "--dataset", dataset, "-n", "0"])
    assert caught.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


def test_registering_preview_keeps_the_cli_light():
    code = ("import sys; from fw.cli.main import build_parser; parser = build_parser(); "
            "assert 'preview' in parser.format_help(); "
            "print(','.join(m for m in ('pandas', 'torch', 'transformers', 'fw.data.tables') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
