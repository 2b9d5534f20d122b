"""Few-shot retrieval (prompt.retrieval): random (seeded) and semantic (a tiny offline encoder) examples from the
training split only, rendered into {__context__}; the index cached and reused, saved with the model and used by
fw predict; k reduced over the input budget; clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fw.data import retrieval
from fw.plugins.retrievers import semantic as embedding
import fw
from fw import console, pipeline
from fw.cli.main import main
from fw.errors import FwError
from fw.data.prompt import PromptRenderer

#: fits the tiny model's 256-token context with a few examples (the default few-shot template barely does)
SHORT_TEMPLATE = "Examples:\n{__context__}\nQ: {question}\nA:"
WORDS = ["apple", "river", "mountain", "violin", "planet", "copper", "garden", "winter", "ocean", "tiger",
         "candle", "bridge"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh cache dir per test."""
    monkeypatch.setenv("FW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A random-init BERT encoder with the fw.model.tiny tokenizer, built offline."""
    import torch
    from transformers import BertConfig, BertModel

    from fw.model.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = build_tokenizer(path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(path))
    return path


@pytest.fixture()
def embedded(monkeypatch) -> list[str]:
    """Every text the encoder embeds, in order."""
    seen: list[str] = []
    real = embedding.embed

    def spy(model_name, texts):
        seen.extend(texts)
        return real(model_name, texts)

    monkeypatch.setattr(embedding, "embed", spy)
    return seen


def table() -> pd.DataFrame:
    """12 training rows (answers train-<word>), 3 validation and 3 test rows (answers held-<i>)."""
    train = [{"question": f"tell me about the {word}", "answer": f"train-{word}", "split": 0} for word in WORDS]
    held = [{"question": f"held out question {i}", "answer": f"held-{i}", "split": 1 if i < 3 else 2}
            for i in range(6)]
    return pd.DataFrame(train + held)


def config(base, retrieval_section: dict, template: str | None = None, **overrides) -> dict:
    """The default few-shot template (from prompt.task), or ``template``."""
    prompt = {"template": template} if template else {"task": "Answer the question."}
    data = {"base_model": str(base), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {**prompt, "retrieval": retrieval_section},
            "adapter": {"type": "lora", "r": 4},
            "trainer": {"type": "finetune", "epochs": 1, "batch_size": 4, "learning_rate": 0.01, "seed": 1},
            "generation": {"max_new_tokens": 2, "do_sample": False},
            "preprocessing": {"split": {"type": "fixed"}}}  # the table's split column
    data.update(overrides)
    return data


def contexts(prompts: list[str]) -> list[list[dict]]:
    """The examples of each prompt (the default few-shot template or :data:`SHORT_TEMPLATE`)."""
    found = []
    for prompt in prompts:
        lines = [line.removeprefix("CONTEXT: ") for line in prompt.splitlines()]
        found.append([json.loads(line) for line in lines if line.startswith("{")])
    return found


def prompts_for(data: dict, frame: pd.DataFrame, train_frame: pd.DataFrame, tokenizer=None) -> list[str]:
    retriever = retrieval.prepare(data, train_frame)
    return retrieval.few_shot_prompts(PromptRenderer(data), frame.to_dict("records"), retriever, data, tokenizer)


def train_rows() -> pd.DataFrame:
    frame = table()
    return frame[frame["split"] == 0].drop(columns=["split"])


# -- random ------------------------------------------------------------------------------------------------------
def test_random_retrieval_is_seeded_and_draws_from_the_training_split_only(tiny_llama_dir):
    data = config(tiny_llama_dir, {"type": "random", "k": 3})
    frame = table().drop(columns=["split"])
    first, again = prompts_for(data, frame, train_rows()), prompts_for(data, frame, train_rows())
    assert first == again
    other_seed = prompts_for({**data, "trainer": {**data["trainer"], "seed": 2}}, frame, train_rows())
    assert other_seed != first
    for row, examples in zip(frame.to_dict("records"), contexts(first)):
        assert len(examples) == 3
        assert all(example["answer"].startswith("train-") for example in examples)  # training split only
        assert row not in examples  # never itself
        assert len({example["answer"] for example in examples}) == 3  # distinct
        assert set(examples[0]) == {"question", "answer"}


def test_the_local_backends_cache_dir_holds_the_index(tmp_path, tiny_llama_dir):
    """Ludwig's ``backend: {type: local, cache_dir: ...}`` is fw's cache directory for the run."""
    data = config(tiny_llama_dir, {"type": "random", "k": 1},
                  backend={"type": "local", "cache_dir": str(tmp_path / "cache")})
    retriever = retrieval.prepare(fw.load_config(data).data, train_rows())
    assert retriever.directory.parent == tmp_path / "cache" / "retrieval"
    assert (retriever.directory / "examples.json").is_file()


def test_training_with_random_retrieval_puts_examples_in_every_split(tmp_path, tiny_llama_dir, monkeypatch):
    captured = {}
    real = retrieval.few_shot_prompts

    def spy(renderer, rows, retriever, data, tokenizer=None, split_name="predict"):
        captured[split_name] = (rows, real(renderer, rows, retriever, data, tokenizer, split_name))
        return captured[split_name][1]

    monkeypatch.setattr(retrieval, "few_shot_prompts", spy)
    data = config(tiny_llama_dir, {"type": "random", "k": 2}, SHORT_TEMPLATE)
    pipeline.train(data, dataset=table(), output_directory=tmp_path, show_progress=False)
    assert not console.warnings
    assert set(captured) == {"train", "validation", "test"}
    for rows, prompts in captured.values():
        for row, examples in zip(rows, contexts(prompts)):
            assert len(examples) == 2 and row not in examples
            assert all(example["answer"].startswith("train-") for example in examples)


# -- semantic ----------------------------------------------------------------------------------------------------
def test_semantic_retrieval_returns_the_nearest_training_rows(tiny_llama_dir, encoder_dir):
    import numpy

    data = config(tiny_llama_dir, {"type": "semantic", "model_name": str(encoder_dir), "k": 3})
    queries = pd.DataFrame({"question": [f"tell me about the {word}" for word in ("violin", "ocean", "apple")]})
    found = contexts(prompts_for(data, queries, train_rows()))
    training_texts = list(train_rows()["question"])
    vectors = embedding.embed(str(encoder_dir), training_texts)
    for query, examples in zip(queries["question"], found):
        # an exact copy of a training input is its own nearest neighbour (cosine 1)
        assert examples[0]["question"] == query
        similarity = vectors @ embedding.embed(str(encoder_dir), [query])[0]
        expected = [training_texts[i] for i in numpy.argsort(-similarity)[:3]]
        assert [example["question"] for example in examples] == expected


def test_the_index_is_cached_by_data_and_model_and_reused(tiny_llama_dir, encoder_dir, embedded, tmp_path):
    section = {"type": "semantic", "model_name": str(encoder_dir), "k": 2, "index_name": "questions"}
    data = config(tiny_llama_dir, section)
    first = retrieval.prepare(data, train_rows())
    assert sorted(embedded) == sorted(train_rows()["question"])
    assert first.directory.parent == tmp_path / "cache" / "retrieval" and first.directory.name.startswith("questions-")
    assert (first.directory / "embeddings.npy").is_file()
    embedded.clear()
    again = retrieval.prepare(data, train_rows())
    assert again.directory == first.directory and embedded == []  # nothing embedded again
    assert any("reusing the semantic index" in message for message in console.messages)
    changed = train_rows().assign(answer=lambda frame: frame["answer"] + "!")
    assert retrieval.prepare(data, changed).directory != first.directory  # other data: another index


def test_the_index_is_saved_with_the_model_and_used_by_predict(tmp_path, tiny_llama_dir, encoder_dir, embedded):
    data = config(tiny_llama_dir, {"type": "semantic", "model_name": str(encoder_dir), "k": 2}, SHORT_TEMPLATE)
    run = pipeline.train(data, dataset=table(), output_directory=tmp_path / "results", show_progress=False)
    saved = run.model_dir / "retrieval"
    assert (saved / "meta.json").is_file() and (saved / "embeddings.npy").is_file()
    import shutil

    shutil.rmtree(tmp_path / "cache")  # the cache is gone: predict must use the copy saved with the model
    embedded.clear()
    new_data = pd.DataFrame({"question": ["tell me about the tiger", "something entirely new"]})
    result = pipeline.predict(model_path=run.model_dir, dataset=new_data, output_directory=tmp_path / "out",
                              show_progress=False)
    found = contexts(list(result.predictions["prompt"]))
    assert found[0][0] == {"question": "tell me about the tiger", "answer": "train-tiger"}
    assert all(example["answer"].startswith("train-") for examples in found for example in examples)
    assert embedded == ["something entirely new"]  # the training rows were not embedded again
    assert not (tmp_path / "cache").exists()


def test_in_context_learning_draws_examples_from_the_datasets_training_split(tmp_path, tiny_llama_dir):
    data = config(tiny_llama_dir, {"type": "random", "k": 2}, SHORT_TEMPLATE, trainer={"type": "none", "seed": 3}, adapter=None)
    result = pipeline.evaluate(config=data, dataset=table(), split="test", output_directory=tmp_path / "out",
                               show_progress=False)
    found = contexts(list(result.predictions["prompt"]))
    assert len(found) == 3 and all(len(examples) == 2 for examples in found)
    assert all(example["answer"].startswith("train-") for examples in found for example in examples)


def test_retrieval_splits_a_dataset_without_a_split_column_itself(tmp_path, tiny_llama_dir):
    data = config(tiny_llama_dir, {"type": "random", "k": 2}, SHORT_TEMPLATE, trainer={"type": "none", "seed": 3},
                  adapter=None, preprocessing={"split": {"probabilities": [0.8, 0.1, 0.1]}})
    frame = table().drop(columns=["split"])
    result = pipeline.predict(config=data, dataset=frame, output_directory=tmp_path / "out", show_progress=False)
    train_split = pipeline.load_splits(data, dataset=frame).train  # 80% at random, seeded
    allowed = set(train_split["answer"])
    found = contexts(list(result.predictions["prompt"]))
    assert len(found) == len(frame) and all(len(examples) == 2 for examples in found)
    assert {example["answer"] for examples in found for example in examples} <= allowed
    assert len(allowed) < len(frame)


def test_the_cli_trains_and_predicts_with_retrieval(tmp_path, tiny_llama_dir):
    config_file, dataset = tmp_path / "config.yaml", tmp_path / "data.csv"
    config_file.write_text(yaml.safe_dump(config(tiny_llama_dir, {"type": "random", "k": 1}, SHORT_TEMPLATE)))
    table().to_csv(dataset, index=False)
    assert main(["train", "--config", str(config_file), "--dataset", str(dataset), "--output_directory",
                 str(tmp_path / "results"), "--no_progress"]) == 0
    model = tmp_path / "results" / "experiment_run" / "model"
    assert (model / "retrieval" / "examples.json").is_file()
    new = tmp_path / "new.csv"
    pd.DataFrame({"question": ["a brand new question"]}).to_csv(new, index=False)
    assert main(["predict", "--model_path", str(model), "--dataset", str(new), "--no_progress"]) == 0
    prompt = pd.read_parquet(model.parent / "predictions" / "predictions.parquet")["prompt"][0]
    assert contexts([prompt])[0][0]["answer"].startswith("train-")


# -- the input budget --------------------------------------------------------------------------------------------
def test_k_is_reduced_when_the_prompt_would_exceed_the_input_budget(tiny_llama_dir):
    from fw.model.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    data = config(tiny_llama_dir, {"type": "random", "k": 4}, SHORT_TEMPLATE)
    unlimited = prompts_for(data, train_rows().head(3), train_rows(), tokenizer)
    sizes = [retrieval.prompt_tokens(prompt, tokenizer) for prompt in unlimited]
    budget = min(sizes) - 5
    data["input_features"] = [{"name": "question", "preprocessing": {"max_sequence_length": budget}}]
    console.clear()
    limited = prompts_for(data, train_rows().head(3), train_rows(), tokenizer)
    for full, short in zip(contexts(unlimited), contexts(limited)):
        assert 0 < len(short) < 4 and short == full[:len(short)]  # the best examples kept, in order
    assert all(retrieval.prompt_tokens(prompt, tokenizer) <= budget for prompt in limited)
    assert any("prompt.retrieval.k: 3 of 3 predict prompt(s) would exceed the" in message
               and "input_features[0].preprocessing.max_sequence_length" in message for message in console.warnings)


# -- errors ------------------------------------------------------------------------------------------------------
def test_a_bad_model_name_is_one_line_naming_the_key(tmp_path, tiny_llama_dir):
    data = config(tiny_llama_dir, {"type": "semantic", "model_name": str(tmp_path / "no-such-encoder"), "k": 2})
    with pytest.raises(FwError) as error:
        pipeline.train(data, dataset=table(), output_directory=tmp_path / "results", show_progress=False)
    message = str(error.value)
    assert message.startswith("prompt.retrieval.model_name: local path") and "\n" not in message
    assert "does not exist" in message and "sentence-transformers/all-MiniLM-L6-v2" in message
    assert not (tmp_path / "results").exists()  # refused before the run directory was made


def test_a_model_name_that_is_not_a_model_names_the_key(tmp_path, tiny_llama_dir):
    (tmp_path / "empty").mkdir()
    data = config(tiny_llama_dir, {"type": "semantic", "model_name": str(tmp_path / "empty"), "k": 2})
    with pytest.raises(FwError, match=r"^prompt\.retrieval\.model_name: .* is not a model directory"):
        retrieval.prepare(data, train_rows())


def test_k_larger_than_the_training_split_warns_naming_k(tiny_llama_dir):
    data = config(tiny_llama_dir, {"type": "random", "k": 20})
    prompts = prompts_for(data, train_rows().head(2), train_rows())
    assert [len(examples) for examples in contexts(prompts)] == [11, 11]  # all the others, never itself
    assert any(message.startswith("prompt.retrieval.k is 20 but the training split has only 12 row(s)")
               for message in console.warnings)


def test_an_empty_training_split_is_an_error(tiny_llama_dir):
    data = config(tiny_llama_dir, {"type": "random", "k": 2})
    with pytest.raises(FwError, match="prompt.retrieval: the training split has no rows"):
        retrieval.prepare(data, train_rows().head(0))


def test_examples_need_the_output_column(tiny_llama_dir):
    data = config(tiny_llama_dir, {"type": "random", "k": 2}, trainer={"type": "none"})
    with pytest.raises(FwError, match="prompt.retrieval: the examples come from the training split"):
        retrieval.for_inference(data, None, pd.DataFrame({"question": ["a", "b"]}))


# -- fw preview --------------------------------------------------------------------------------------------------
def test_preview_shows_the_retrieved_context(tmp_path, tiny_llama_dir, capsys):
    config_file, dataset = tmp_path / "config.yaml", tmp_path / "data.csv"
    config_file.write_text(yaml.safe_dump(config(tiny_llama_dir, {"type": "random", "k": 2}, SHORT_TEMPLATE)))
    table().to_csv(dataset, index=False)
    assert main(["preview", str(config_file), "--dataset", str(dataset), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and '{"question": "tell me about the' in out and '"answer": "train-' in out
    assert "Q: tell me about the apple" in out


def test_an_unreachable_hub_model_name_is_one_line_naming_the_key(monkeypatch, tiny_llama_dir):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    data = config(tiny_llama_dir, {"type": "semantic", "model_name": "no-such-org/no-such-encoder", "k": 2})
    with pytest.raises(FwError) as error:
        retrieval.prepare(data, train_rows())
    assert str(error.value).startswith("prompt.retrieval.model_name: 'no-such-org/no-such-encoder' is not in the "
                                       "local cache, and HF_HUB_OFFLINE is set")
    assert "\n" not in str(error.value)
