"""Datasets: every file format, splits (column or seeded random), cleaning with reported drops."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from fw import console
from fw.config.load import load_config
from fw.data.tables import clean, make_splits, read_dataset, read_table, split_code
from fw.errors import FwError

ROWS = [{"question": "Why?", "answer": "Because"}, {"question": "0042", "answer": "NA"}]


def config(prompt=None, output=None, **extra) -> dict:
    data = {"base_model": "some/model", "input_features": [{"name": "question", "type": "text"}],
            "output_features": [output or {"name": "answer", "type": "text"}], **extra}
    if prompt is not None:
        data["prompt"] = prompt
    return load_config(data).data


def numbered(count: int, **columns) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"q{i}" for i in range(count)], "answer": [f"a{i}" for i in range(count)],
                         **columns})


# -- reading ----------------------------------------------------------------------------------------
def test_csv_is_read_as_text_and_only_empty_cells_are_missing(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('question,answer\nWhy?,Because\n0042,NA\n"a, b",\n')
    frame = read_table(path)
    assert frame["question"].tolist() == ["Why?", "0042", "a, b"]
    assert frame["answer"].tolist()[:2] == ["Because", "NA"] and pd.isna(frame["answer"][2])


def test_tsv(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("question\tanswer\nWhy?\tBecause\n0042\tNA\n")
    assert read_table(path).to_dict("records") == ROWS


def test_json_records_and_json_lines_in_a_json_file(tmp_path):
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{**row, "date": "2024-01-02", "n": 3} for row in ROWS]))
    assert read_table(records).to_dict("records") == [{**row, "date": "2024-01-02", "n": 3} for row in ROWS]
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(row) for row in ROWS))
    assert read_table(lines).to_dict("records") == ROWS


def test_jsonl(tmp_path):
    path = tmp_path / "data.JSONL"
    path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n")
    assert read_table(path).to_dict("records") == ROWS


def test_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    assert read_table(str(path)).to_dict("records") == ROWS


def test_compressed_csv(tmp_path):
    path = tmp_path / "data.csv.gz"
    pd.DataFrame(ROWS).to_csv(path, index=False)
    assert read_table(path).to_dict("records") == ROWS


def test_dataframe_is_copied_and_reindexed():
    source = pd.DataFrame(ROWS, index=[10, 20])
    frame = read_table(source)
    frame.loc[0, "question"] = "changed"
    assert source.loc[10, "question"] == "Why?" and list(frame.index) == [0, 1]


def test_unsupported_suffix_lists_the_supported_ones(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(FwError) as caught:
        read_table(path)
    assert str(caught.value) == (f"cannot read dataset {path}: unsupported file type '.xlsx'. "
                                 "Supported: .csv, .tsv, .json, .jsonl, .parquet.")


def test_misspelled_suffix_gets_a_suggestion(tmp_path):
    path = tmp_path / "data.jsonll"
    path.write_text("{}")
    with pytest.raises(FwError, match=r"unsupported file type '.jsonll'.*Did you mean '.jsonl'\?"):
        read_table(path)


def test_missing_file(tmp_path):
    with pytest.raises(FwError) as caught:
        read_table(tmp_path / "nope.csv")
    assert str(caught.value) == f"dataset file not found: {tmp_path / 'nope.csv'}"


def test_directory_is_not_a_dataset(tmp_path):
    with pytest.raises(FwError, match=r"is a directory; give a file \(.csv, .tsv"):
        read_table(tmp_path)


def test_empty_file_and_header_only_file(tmp_path):
    empty, header = tmp_path / "empty.csv", tmp_path / "header.csv"
    empty.write_text("")
    header.write_text("question,answer\n")
    with pytest.raises(FwError, match=r"^dataset file .*empty.csv is empty\.$"):
        read_table(empty)
    with pytest.raises(FwError, match=r"^dataset .*header.csv has no rows\.$"):
        read_table(header)


def test_malformed_file_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "a"\n')
    with pytest.raises(FwError) as caught:
        read_table(path)
    assert str(caught.value).startswith(f"cannot read dataset {path} as JSONL: ") and "\n" not in str(caught.value)


def test_other_sources_are_refused():
    with pytest.raises(FwError, match=r"cannot read a dataset from a list: give a file path"):
        read_table([{"a": 1}])


# -- splitting --------------------------------------------------------------------------------------
EIGHTY_TEN_TEN = {"split": {"probabilities": [0.8, 0.1, 0.1]}}


def test_random_split_respects_ratios_and_is_reproducible():
    frame = numbered(100)
    first = make_splits(config(preprocessing=EIGHTY_TEN_TEN), dataset=frame)
    assert first.sizes() == {"train": 80, "validation": 10, "test": 10}
    again = make_splits(config(preprocessing=EIGHTY_TEN_TEN), dataset=frame)
    assert all(a.equals(b) for (_, a), (_, b) in zip(first.items(), again.items()))
    together = sorted(first.train.index.tolist() + first.validation.index.tolist() + first.test.index.tolist())
    assert together == list(range(100))
    assert first.train.index.is_monotonic_increasing  # file order kept inside a split
    assert "data: 80 training, 10 validation, 10 test rows" in console.messages


def test_random_split_follows_seed_and_probabilities():
    frame = numbered(50)
    other_seed = make_splits(config(trainer={"type": "finetune", "seed": 7}), dataset=frame)
    assert other_seed.train.index.tolist() != make_splits(config(), dataset=frame).train.index.tolist()
    halves = make_splits(config(preprocessing={"split": {"probabilities": [0.5, 0.5, 0.0]}}), dataset=frame)
    assert halves.sizes() == {"train": 25, "validation": 25, "test": 0}


def test_sample_ratio_is_seeded_and_keeps_file_order():
    data = config(preprocessing={"sample_ratio": 0.5})
    splits = make_splits(data, dataset=numbered(40))
    kept = sorted(index for _, frame in splits.items() for index in frame.index)
    assert len(kept) == 20 and kept == sorted(
        index for _, frame in make_splits(data, dataset=numbered(40)).items() for index in frame.index)


def test_sample_ratio_that_keeps_nothing_is_an_error():
    with pytest.raises(FwError, match=r"preprocessing.sample_ratio: 0.01 keeps no row of the 3 in the DataFrame"):
        make_splits(config(preprocessing={"sample_ratio": 0.01}), dataset=numbered(3))


FIXED = {"split": {"type": "fixed"}}
DROP_EMPTY_INPUTS = {"name": "question", "type": "text", "preprocessing": {"missing_value_strategy": "drop_row"}}


def test_split_column_with_numbers_and_words_any_case(tmp_path):
    path = tmp_path / "data.csv"
    numbered(6, split=["0", "train", "1", "Validation", "2", " TEST "]).to_csv(path, index=False)
    splits = make_splits(config(preprocessing=FIXED), dataset=path)
    assert {name: frame.index.tolist() for name, frame in splits.items()} == \
        {"train": [0, 1], "validation": [2, 3], "test": [4, 5]}
    assert "split" not in splits.train.columns
    assert [split_code(value) for value in (0, 1.0, "2", "val", True, None)] == [0, 1, 2, 1, None, None]


def test_bad_split_values_name_the_rows():
    frame = numbered(5, split=[0, "dev", 1, None, 7])
    with pytest.raises(FwError) as caught:
        make_splits(config(preprocessing=FIXED), dataset=frame)
    assert str(caught.value) == ("column 'split' of the DataFrame must hold 0/1/2 or train/validation/test; 3 row(s) "
                                 "do not: row 2 ('dev'), row 4 (empty), row 5 (7).")


def test_fixed_split_needs_the_column():
    data = config(preprocessing={"split": {"type": "fixed", "column": "fold"}})
    with pytest.raises(FwError) as caught:
        make_splits(data, dataset=numbered(3, folds=[0, 1, 2]))
    assert str(caught.value) == ("preprocessing.split.type is fixed, but dataset the DataFrame has no column 'fold'. "
                                 "Columns: question, answer, folds. Did you mean 'folds'? Add the column "
                                 "(0/train, 1/validation, 2/test) or set preprocessing.split.column.")


def test_explicit_sets(tmp_path):
    path = tmp_path / "train.jsonl"
    numbered(4).to_json(path, orient="records", lines=True)
    splits = make_splits(config(), training_set=path, test_set=numbered(2))
    assert splits.sizes() == {"train": 4, "validation": 0, "test": 2}
    assert list(splits.validation.columns) == ["question", "answer"]


def test_dataset_and_explicit_sets_are_exclusive_and_one_is_needed():
    with pytest.raises(FwError, match=r"give either --dataset \(split automatically\) or --training_set"):
        make_splits(config(), dataset=numbered(3), training_set=numbered(3))
    with pytest.raises(FwError, match=r"no data given: pass --dataset, or --training_set"):
        make_splits(config())


# -- cleaning ---------------------------------------------------------------------------------------
def test_rows_without_input_text_are_dropped_with_a_warning_naming_them():
    frame = numbered(14)
    frame.loc[[2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1], "question"] = ["", None, " ", *[None] * 8]
    frame.loc[0, "question"] = None
    cleaned = clean(frame, config(input_features=[DROP_EMPTY_INPUTS]), "train")
    assert cleaned.index.tolist() == [3, 4]
    assert console.warnings == ["train: dropped 12 of 14 row(s) with no input text (empty 'question'): "
                               "rows 1, 2, 3, 6, 7, 8, 9, 10, 11, 12 and 2 more."]


def test_a_row_is_kept_when_any_template_column_has_text():
    data = config({"template": "{title} {body}"})
    frame = pd.DataFrame({"title": ["t", None, None], "body": [None, "b", ""], "answer": ["x", "y", "z"]})
    assert clean(frame, data, "validation").index.tolist() == [0, 1]
    assert console.warnings == ["validation: dropped 1 of 3 row(s) with no input text (empty 'title', 'body'): row 3."]


def test_sample_rows_need_text_in_some_column():
    data = config({"template": "{__sample__}"})
    frame = pd.DataFrame({"a": [None, "x"], "b": [None, None], "answer": ["y", "z"], "split": [0, 0]})
    assert clean(frame, data, "train").index.tolist() == [1]
    assert console.warnings == ["train: dropped 1 of 2 row(s) with no input text (empty every input column): row 1."]


def test_every_row_dropped_is_an_error():
    frame = pd.DataFrame({"question": [None, ""], "answer": ["a", "b"]})
    with pytest.raises(FwError, match=r"^no train rows left: all 2 were dropped \(see the warnings above\)\.$"):
        clean(frame, config(input_features=[DROP_EMPTY_INPUTS]), "train")


def test_unknown_template_column_is_checked_by_clean():
    with pytest.raises(FwError, match=r"^prompt.template names column 'questoin' that the dataset does not have. "
                                      r"Columns: question, answer. Did you mean 'question'\?$"):
        clean(numbered(2), config({"template": "{questoin}"}), "train")


def test_training_splits_need_the_output_column():
    frame = pd.DataFrame({"question": ["q"], "answers": ["a"]})
    with pytest.raises(FwError) as caught:
        clean(frame, config(), "train")
    assert str(caught.value) == ("output_features[0] reads column 'answer' that the train data does not have. "
                                 "Columns: question, answers. Did you mean 'answers'?")
    assert clean(frame, config(), "predict").index.tolist() == [0]


def test_missing_text_targets_are_dropped_in_training_splits_only():
    frame = pd.DataFrame({"question": ["a", "b", "c"], "answer": ["x", None, "  "]})
    assert clean(frame, config(), "train").index.tolist() == [0]
    assert console.warnings == ["train: dropped 2 row(s) with no 'answer' target: rows 2, 3."]
    assert clean(frame, config(), "test").index.tolist() == [0, 1, 2]


def test_missing_category_values_get_the_fallback_label():
    output = {"name": "answer", "type": "category", "preprocessing": {"fallback_label": "neutral"},
              "decoder": {"type": "category_extractor", "match": {"neutral": {"type": "contains", "value": "n"}}}}
    data = config(output=output, trainer={"type": "none"})
    frame = pd.DataFrame({"question": ["a", "b", "c"], "answer": [1.0, None, float("nan")]})
    cleaned = clean(frame, data, "test")
    assert cleaned["answer"].tolist() == [1.0, "neutral", "neutral"]
    assert console.warnings == ["test: 2 row(s) with no 'answer' value get the fallback_label 'neutral': rows 2, 3."]
    assert clean(frame, data, "predict")["answer"].tolist() == [1.0, "neutral", "neutral"]


def test_missing_category_values_without_fallback_are_dropped():
    output = {"name": "answer", "type": "category",
              "decoder": {"type": "category_extractor", "match": {"yes": {"type": "contains", "value": "y"}}}}
    data = config(output=output, trainer={"type": "none"})
    frame = pd.DataFrame({"question": ["a", "b"], "answer": ["yes", None]})
    assert clean(frame, data, "test").index.tolist() == [0]
    assert console.warnings == ["test: dropped 1 row(s) with no 'answer' value (set "
                               "output_features[0].preprocessing.fallback_label to keep them): row 2."]
    assert clean(frame, data, "predict").index.tolist() == [0, 1]  # predictions need no label


def test_row_numbers_survive_splitting(tmp_path):
    path = tmp_path / "data.csv"
    frame = numbered(6, split=["0", "0", "1", "0", "2", "0"])
    frame.loc[3, "question"] = ""
    frame.to_csv(path, index=False)
    data = config(input_features=[DROP_EMPTY_INPUTS], preprocessing=FIXED)
    splits = make_splits(data, dataset=path)
    clean(splits.train, data, "train")
    assert console.warnings == ["train: dropped 1 of 4 row(s) with no input text (empty 'question'): row 4."]


def test_read_dataset_reads_and_cleans(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("question\nfirst\n\nthird\n")
    frame = read_dataset(path, config(input_features=[DROP_EMPTY_INPUTS]))
    assert frame["question"].tolist() == ["first", "third"] and frame.index.tolist() == [0, 2]
    assert console.warnings == ["predict: dropped 1 of 3 row(s) with no input text (empty 'question'): row 2."]


# -- Ludwig's splits, sampling, missing inputs, lower case --------------------------------------------------------
#: row indices per split that Ludwig 0.17.8 itself gives (RandomSplitter / HashSplitter, seed 42,
#: probabilities 0.7/0.1/0.2, on ``numbered(n)`` with an ``id`` column "id<i>"), computed with Ludwig's own code
LUDWIG_RANDOM_10 = [[0, 1, 5, 8], [2, 7, 9], [3, 4, 6]]
LUDWIG_RANDOM_7 = [[0, 1, 2, 5], [], [3, 4, 6]]
LUDWIG_HASH_10 = [[0, 1, 3, 4, 5, 6, 7, 8, 9], [], [2]]


def split_rows(splits) -> list[list[int]]:
    return [frame.index.tolist() for _, frame in splits.items()]


def test_random_split_gives_ludwigs_rows():
    """The default split (Ludwig's 0.7/0.1/0.2) puts the same rows where Ludwig does, including its rule that a
    validation or test split of fewer than 3 rows gives them to training."""
    assert split_rows(make_splits(config(), dataset=numbered(10))) == LUDWIG_RANDOM_10
    assert split_rows(make_splits(config(), dataset=numbered(7))) == LUDWIG_RANDOM_7
    hundred = make_splits(config(), dataset=numbered(100)).sizes()
    assert hundred == {"train": 70, "validation": 10, "test": 20}


def test_hash_split_gives_ludwigs_rows_and_keeps_an_id_in_its_split():
    data = config(preprocessing={"split": {"type": "hash", "column": "id"}})
    ids = [f"id{i}" for i in range(10)]
    assert split_rows(make_splits(data, dataset=numbered(10, id=ids))) == LUDWIG_HASH_10
    grown = make_splits(data, dataset=numbered(30, id=[f"id{i}" for i in range(30)]))
    assert set(grown.test.index) >= {2} and not set(grown.train.index) & {2}


def test_stratified_split_keeps_each_values_share():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    data = config(preprocessing={"split": {"type": "stratify", "column": "label", "probabilities": [0.6, 0.2, 0.2]}})
    splits = make_splits(data, dataset=numbered(100, label=labels))
    counts = {name: frame["label"].value_counts().to_dict() for name, frame in splits.items()}
    assert counts == {"train": {"a": 30, "b": 18, "c": 12}, "validation": {"a": 10, "b": 6, "c": 4},
                      "test": {"a": 10, "b": 6, "c": 4}}


def test_datetime_split_trains_on_the_oldest_rows():
    dates = [f"2024-01-{day:02d}" for day in (5, 1, 9, 3, 7, 2, 10, 4, 8, 6)]
    data = config(preprocessing={"split": {"type": "datetime", "column": "date", "probabilities": [0.6, 0.2, 0.2]}})
    splits = make_splits(data, dataset=numbered(10, date=dates))
    assert sorted(splits.train["date"]) == sorted(dates)[:6]
    assert sorted(splits.test["date"]) == sorted(dates)[8:]


def test_split_on_a_missing_column_names_it():
    data = config(preprocessing={"split": {"type": "hash", "column": "user"}})
    with pytest.raises(FwError, match=r"^preprocessing.split.column: dataset the DataFrame has no column 'user'"):
        make_splits(data, dataset=numbered(5))


def test_a_split_column_is_not_used_by_the_random_split():
    """Ludwig splits at random even when the data has a split column (it warns): so does fw."""
    splits = make_splits(config(), dataset=numbered(10, split=[0] * 10))
    assert split_rows(splits) == LUDWIG_RANDOM_10
    assert any("has a 'split' column, but preprocessing.split.type is random" in w for w in console.warnings)


def test_sample_size_draws_that_many_rows():
    data = config(preprocessing={"sample_size": 20, "split": {"probabilities": [1.0, 0.0, 0.0]}})
    splits = make_splits(data, dataset=numbered(50))
    assert splits.sizes() == {"train": 20, "validation": 0, "test": 0}
    assert splits.train.index.tolist() == make_splits(data, dataset=numbered(50)).train.index.tolist()


@pytest.mark.parametrize("strategy, filled", [
    ("fill_with_const", ["q0", "<UNK>", "q2", "<UNK>", "q4"]),
    ("fill_with_mode", ["q0", "q0", "q2", "q0", "q4"]),
    ("bfill", ["q0", "q2", "q2", "q4", "q4"]),
    ("ffill", ["q0", "q0", "q2", "q2", "q4"]),
])
def test_empty_inputs_follow_the_missing_value_strategy(strategy, filled):
    frame = numbered(5)
    frame.loc[[1, 3], "question"] = None
    if strategy == "fill_with_mode":
        frame.loc[2, "question"] = "q0"
        filled = ["q0", "q0", "q0", "q0", "q4"]
    data = config(input_features=[{"name": "question", "preprocessing": {"missing_value_strategy": strategy}}])
    assert clean(frame, data, "train")["question"].tolist() == filled
    assert console.warnings[0].startswith("train: 2 row(s) with no 'question' get ")


def test_lowercase_applies_to_the_whole_prompt_and_to_the_target():
    from fw.data.prompt import PromptRenderer, target_text

    data = config({"template": "Q: {question}"}, output={"name": "answer", "preprocessing": {"lowercase": True}},
                  input_features=[{"name": "question", "preprocessing": {"lowercase": True}}])
    row = {"question": "Why The Sky?", "answer": "Because LIGHT"}
    assert PromptRenderer(data).render(row) == "q: why the sky?"
    assert target_text(row, data) == "because light"


def test_sampling_and_splitting_messages():
    data = config(preprocessing={"sample_size": 80})
    make_splits(data, dataset=numbered(50))
    assert "preprocessing.sample_size: 80 is not below the 50 rows of the DataFrame; all are used." in console.warnings
    dated = config(preprocessing={"split": {"type": "datetime", "column": "date"}})
    with pytest.raises(FwError) as caught:
        make_splits(dated, dataset=numbered(3, date=["2024-01-01", "soon", "2024-01-03"]))
    assert str(caught.value) == "preprocessing.split.column 'date' must hold dates; 1 row(s) do not: row 2."


def test_fill_with_mode_needs_a_value():
    data = config(input_features=[{"name": "question", "preprocessing": {"missing_value_strategy": "fill_with_mode"}}])
    frame = pd.DataFrame({"question": [None, ""], "answer": ["a", "b"]})
    with pytest.raises(FwError) as caught:
        clean(frame, data, "train")
    assert str(caught.value) == ("train: every 'question' value is empty, so missing_value_strategy fill_with_mode has "
                                 "no value to fill with.")
