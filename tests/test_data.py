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


@pytest.fixture(autouse=True)
def fresh_report():
    console.clear()
    yield
    console.clear()


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
def test_random_split_respects_ratios_and_is_reproducible():
    frame = numbered(100)
    first = make_splits(config(), dataset=frame)
    assert first.sizes() == {"train": 80, "validation": 10, "test": 10}
    again = make_splits(config(), dataset=frame)
    assert all(a.equals(b) for (_, a), (_, b) in zip(first.items(), again.items()))
    together = sorted(first.train.index.tolist() + first.validation.index.tolist() + first.test.index.tolist())
    assert together == list(range(100))
    assert first.train.index.is_monotonic_increasing  # file order kept inside a split
    assert "data: 80 training, 10 validation, 10 test rows" in console.messages


def test_random_split_follows_seed_and_probabilities():
    frame = numbered(50)
    other_seed = make_splits(config(trainer={"seed": 7}), dataset=frame)
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


def test_split_column_with_numbers_and_words_any_case(tmp_path):
    path = tmp_path / "data.csv"
    numbered(6, split=["0", "train", "1", "Validation", "2", " TEST "]).to_csv(path, index=False)
    splits = make_splits(config(), dataset=path)
    assert {name: frame.index.tolist() for name, frame in splits.items()} == \
        {"train": [0, 1], "validation": [2, 3], "test": [4, 5]}
    assert "split" not in splits.train.columns
    assert [split_code(value) for value in (0, 1.0, "2", "val", True, None)] == [0, 1, 2, 1, None, None]


def test_bad_split_values_name_the_rows():
    frame = numbered(5, split=[0, "dev", 1, None, 7])
    with pytest.raises(FwError) as caught:
        make_splits(config(), dataset=frame)
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
    cleaned = clean(frame, config(), "train")
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
        clean(frame, config(), "train")


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
    splits = make_splits(config(), dataset=path)
    clean(splits.train, config(), "train")
    assert console.warnings == ["train: dropped 1 of 4 row(s) with no input text (empty 'question'): row 4."]


def test_read_dataset_reads_and_cleans(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("question\nfirst\n\nthird\n")
    frame = read_dataset(path, config())
    assert frame["question"].tolist() == ["first", "third"] and frame.index.tolist() == [0, 2]
    assert console.warnings == ["predict: dropped 1 of 3 row(s) with no input text (empty 'question'): row 2."]
