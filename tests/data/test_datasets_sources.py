"""Sources read through ``datasets``: hub ids, JSON/Parquet/CSV files and dataset directories, TRL-style rows."""

import json
import time

import datasets
import pytest

from tests.helpers.problems import write_jsonl
from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.data.sources import BadRows, load_problems, source_name
from tracer_pl.errors import DataError

ROWS = [{"question": "2+2?", "gold": "4"}, {"question": "3+3?", "gold": "6"}]


@pytest.fixture
def builders(monkeypatch):
    """Records the first argument of every ``datasets.load_dataset`` call (the builder or the hub id)."""
    calls = []
    real = datasets.load_dataset

    def spy(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    return calls


def golds(source, **options):
    return [p.gold for p in load_problems(str(source), **options)]


# ---------------------------------------------------------------------- local files
def test_json_parquet_and_csv_go_through_load_dataset(tmp_path, builders):
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ROWS}))
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "t.parquet"))
    (tmp_path / "t.csv").write_text("question,gold\n2+2?,4\n3+3?,6\n")
    (tmp_path / "t.tsv").write_text("question\tgold\n2+2?\t4\n3+3?\t6\n")
    for name in ("list.json", "wrapped.json", "t.parquet", "t.csv", "t.tsv"):
        assert golds(tmp_path / name) == ["4", "6"], name
    assert builders == ["parquet", "csv", "csv"]  # JSON is read here, its numbers exactly
    write_jsonl(tmp_path / "t.jsonl", ROWS)
    assert golds(tmp_path / "t.jsonl") == ["4", "6"] and len(builders) == 3  # JSONL is read line by line


def test_rows_of_a_json_file_are_named_by_position_and_skippable(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([ROWS[0], {"question": "", "gold": "1"}, {"gold": "2"}, ROWS[1]]))
    with pytest.raises(DataError, match=r"^rows.json row 2: field 'question' is empty$"):
        golds(path)
    bad = BadRows()
    assert golds(path, on_bad_row="skip", bad_rows=bad) == ["4", "6"]
    assert bad.reasons == ["rows.json row 2: field 'question' is empty", "rows.json row 3: missing field 'question'"]


@pytest.mark.parametrize("content, message", [
    ('{"rows": 3}', "expected a JSON list of objects (or {'data': [...]}), found an object without a 'data' list"),
    ("3", "expected a JSON list of objects (or {'data': [...]}), found a number"),
    ('"text"', "found a string"),
    ('[{"question": "q", ', "cannot read as JSON"),
    ('{"question": "q", "gold": "1"}\n{"question": "r", "gold": "2"}\n', "found several (JSON Lines? then name the"),
])
def test_unusable_json_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        golds(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, content", [
    ("empty.json", ""), ("blank.json", "  \n"), ("list.json", "[]"), ("data.json", '{"data": []}'),
    ("empty.csv", ""), ("header.csv", "question,gold\n"),
])
def test_files_without_rows_give_no_problems(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    assert golds(tmp_path / name) == []


def test_csv_cells_are_read_as_written(tmp_path):
    path = tmp_path / "golds.csv"
    path.write_bytes('\ufeffquestion,gold,id\n"a, b",1e3,007\nc,NA,x2\nd,,x3\ne,"1,234",x4\n'.encode())
    bad = BadRows()
    problems = list(load_problems(str(path), field_map={"question": "question", "gold": "gold", "uid": "id"},
                                  on_bad_row="skip", bad_rows=bad))
    # pandas alone would read 1e3 as 1000.0, NA and the empty cell as NaN, and the id 007 as 7
    assert [(p.question, p.gold, p.dataset, p.uid) for p in problems] == [
        ("a, b", "1e3", "exact", "007"), ("c", "NA", "exact", "x2"), ("e", "1234", "gsm8k", "x4")]
    assert bad.reasons == ["golds.csv row 3: field 'gold' is empty"]
    (tmp_path / "twice.csv").write_text("question,question\na,b\n")
    with pytest.raises(DataError, match="twice.csv: the header names the column 'question' more than once"):
        golds(tmp_path / "twice.csv")
    (tmp_path / "ragged.csv").write_text("question,gold\na,1\nb,2,3\n")
    with pytest.raises(DataError, match=r"ragged.csv: cannot read as CSV \(ParserError: .*line 3"):
        golds(tmp_path / "ragged.csv")
    (tmp_path / "latin.csv").write_bytes(b"question,gold\ncaf\xe9,1\n")
    with pytest.raises(DataError, match="latin.csv: not UTF-8 text"):
        golds(tmp_path / "latin.csv")


def test_a_broken_parquet_file_names_the_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"broken.parquet: cannot read as Parquet \(ArrowInvalid"):
        golds(path)


# ---------------------------------------------------------------------- directories
def test_saved_dataset_directories(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert golds(tmp_path / "one") == ["4", "6"]
    assert next(iter(load_problems(str(tmp_path / "one")))).uid == "one row 1"
    with pytest.raises(DataError, match="one: holds one dataset without named splits; drop .split=test$"):
        golds(f"{tmp_path / 'one'}?split=test")
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                                 "validation": datasets.Dataset.from_list(ROWS[1:])})
    both.save_to_disk(str(tmp_path / "two"))
    assert golds(tmp_path / "two") == ["4"]
    assert golds(f"{tmp_path / 'two'}?split=validation", split="test") == ["6"]
    with pytest.raises(DataError, match=r"two: no split 'test' \(it has train, validation\); choose one with .*two"
                                        r"\?split=<name>"):
        golds(tmp_path / "two", split="test")
    assert source_name(str(tmp_path / "two")) == "two"


def test_a_directory_of_data_files_is_read_like_a_hub_repository(tmp_path):
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    datasets.Dataset.from_list(ROWS[:1]).to_parquet(str(data / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(ROWS[1:]).to_parquet(str(data / "test-00000-of-00001.parquet"))
    assert golds(tmp_path / "repo") == ["4"] and golds(tmp_path / "repo", split="test") == ["6"]
    assert next(iter(load_problems(str(tmp_path / "repo"), split="test"))).uid == "repo test row 1"


def test_an_empty_directory_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="not a readable file, nor a dataset directory .*doesn't contain any data"):
        golds(tmp_path)


# ---------------------------------------------------------------------- hub ids
def fake_hub(monkeypatch, splits):
    """``datasets.load_dataset`` answering every hub id with ``splits`` and recording its arguments."""
    calls = []

    def load(path, name=None, *, split=None, revision=None, streaming=False, **kwargs):
        calls.append({"path": path, "name": name, "split": split, "revision": revision, "streaming": streaming})
        whole = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
        return whole if split is None else whole[split]

    monkeypatch.setattr(datasets, "load_dataset", load)
    return calls


def test_any_hub_id_is_loaded_with_its_options_and_field_map(monkeypatch):
    rows = [{"prompt": "Add 2 and 2.", "target": "4", "idx": 10}, {"prompt": "Capital of France?", "target": "Paris"}]
    calls = fake_hub(monkeypatch, {"train": rows, "test": rows[:1]})
    field_map = {"question": "prompt", "gold": "target", "uid": "idx"}
    problems = list(load_problems("someone/arith?config=small&revision=v2", field_map=field_map))
    assert [(p.question, p.gold, p.dataset, p.uid) for p in problems] == [
        ("Add 2 and 2.", "4", "gsm8k", "10"), ("Capital of France?", "Paris", "exact", "someone/arith train row 2")]
    assert calls == [{"path": "someone/arith", "name": "small", "split": None, "revision": "v2", "streaming": False}]
    assert golds("someone/arith", split="test", field_map=field_map) == ["4"]
    assert golds("someone/arith?split=test", field_map=field_map) == ["4"] and calls[-1]["split"] == "test"
    assert source_name("someone/arith?config=small") == "arith"


def test_hub_split_choice_and_bad_options(monkeypatch):
    fake_hub(monkeypatch, {"train": ROWS, "validation": ROWS[:1]})
    assert golds("someone/qa", split="train") == ["4", "6"]
    with pytest.raises(DataError, match=r"^someone/qa: no split 'test' \(it has train, validation\); choose one "
                                        r"with someone/qa\?split=<name>$"):
        golds("someone/qa", split="test")
    fake_hub(monkeypatch, {"train": ROWS})
    assert golds("someone/qa", split="test") == ["4", "6"]  # one split serves both
    with pytest.raises(DataError, match=r"someone/qa\?subset=x: expected options config/split/revision as "
                                        r"key=value separated by '&', found 'subset=x'"):
        golds("someone/qa?subset=x")


def test_a_hub_id_offline_is_one_line_error_quickly():
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        golds("someone/not-cached-anywhere")
    assert time.monotonic() - start < 15
    message = str(error.value)
    assert message.startswith("someone/not-cached-anywhere: no local file or directory of that name, and "
                              "someone/not-cached-anywhere is not in the local cache while the hub is switched off")
    assert "\n" not in message
    with pytest.raises(DataError, match="unknown data source 'gsm9k'"):  # a bare name is not a hub id
        golds("gsm9k")
    with pytest.raises(DataError, match="no such file"):  # a path-looking source stays a path
        golds("someone/absent.jsonl")


def test_a_hub_error_online_names_the_id_and_the_cause(monkeypatch):
    def unreachable(*args, **kwargs):
        raise FileNotFoundError("Dataset 'someone/typo' doesn't exist on the Hub\nor cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DataError) as error:
        golds("someone/typo")
    assert str(error.value) == ("someone/typo: no local file or directory of that name, and cannot load someone/typo "
                                "from the Hugging Face hub (FileNotFoundError: Dataset 'someone/typo' doesn't exist "
                                "on the Hub or cannot be accessed.)")


def test_the_data_module_trains_on_a_hub_id(monkeypatch):
    fake_hub(monkeypatch, {"train": [{"question": f"{i}+1?", "gold": str(i + 1)} for i in range(6)]})
    data = ReasoningDataModule(train="someone/sums", test="someone/sums", batch_size=2, test_limit=3)
    data.setup("test")
    assert data.test_names == ["sums"] and [len(b) for b in data.test_dataloader()[0]] == [2, 1]
    assert sorted(p.gold for batch in data.train_dataloader() for p in batch) == [str(i + 1) for i in range(6)]


# ---------------------------------------------------------------------- TRL-style rows
def test_trl_prompt_and_solution_rows(tmp_path):
    rows = [
        {"prompt": [{"role": "system", "content": "Think."}, {"role": "user", "content": "What is 6*7?"}],
         "solution": "42"},
        {"prompt": "Simplify 2/4.", "solution": "We halve: \\boxed{\\frac{1}{2}}"},
        {"prompt": [{"role": "system", "content": "Think."}], "solution": "1"},
        {"prompt": "q", "solution": "\\boxed{}"},
    ]
    path = write_jsonl(tmp_path / "trl.jsonl", rows)
    bad = BadRows()
    problems = list(load_problems(str(path), on_bad_row="skip", bad_rows=bad))
    assert [(p.question, p.gold, p.dataset) for p in problems] == [
        ("What is 6*7?", "42", "gsm8k"), ("Simplify 2/4.", "\\frac{1}{2}", "math500")]
    assert bad.reasons == ["trl.jsonl line 3: field 'prompt' holds chat messages without a user message",
                           "trl.jsonl line 4: field 'solution' has an empty \\boxed{}"]
    chat = [{"prompt": rows[0]["prompt"], "target": "42"}]
    mapped = load_problems(str(write_jsonl(tmp_path / "m.jsonl", chat)), field_map={"question": "prompt",
                                                                                     "gold": "target"})
    assert [p.question for p in mapped] == ["What is 6*7?"]
