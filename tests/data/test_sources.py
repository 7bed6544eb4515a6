"""Data sources and the data module: golds read correctly, bad rows reported precisely, seeded streaming."""

import json
import time
from pathlib import Path

import pytest

from tracer_pl.data import ProblemStream, ReasoningDataModule
from tracer_pl.errors import ConfigError, DataError
from tracer_pl.sources import BadRows, load_problems

DATA = Path(__file__).resolve().parent / "data"
GSM = DATA / "gsm8k" / "test_sample64.jsonl"
MATH = DATA / "math500" / "test_sample64.jsonl"


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_gsm8k_and_math_files_give_the_gold_answers():
    gsm = list(load_problems(str(GSM)))
    assert len(gsm) == 64 and gsm[0].dataset == "gsm8k"
    assert gsm[0].gold == "18"  # Janet's ducks: (16 - 3 - 4) * 2
    assert gsm[1].gold == "3"  # the robe: 2 bolts blue + 1 white
    assert gsm[0].uid == "test_sample64.jsonl line 1"
    math = list(load_problems(str(MATH)))
    assert len(math) == 64 and math[0].dataset == "math500"
    first = json.loads(MATH.read_text().splitlines()[0])
    assert math[0].gold == first["answer"] and math[0].uid == first["unique_id"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"question": "q", "answer": "4"}], "line 1: field 'answer' expected '#### <number>'"),  # no ####
        ([{"question": "q", "answer": "#### 4"}, {"question": "q", "answer": "x #### four"}],
         "line 2: field 'answer' expected a number after '####', found 'four'"),
        ([{"question": "q", "answer": "#### 4"}, {"question": "", "answer": "#### 4"}],
         "line 2: field 'question' is empty"),
        ([{"question": "q", "answer": "#### 4"}, {"answer": "#### 4"}], "line 2: missing field 'question'"),
        ([{"question": "q", "answer": "#### 4"}, {"question": ["q"], "answer": "#### 4"}],
         "line 2: field 'question' must be a string, found list"),
        ([{"question": "q", "answer": "#### 4"}, {"question": "q", "answer": "#### 4"}, "{not json"],
         "line 3: invalid JSON"),
        ([{"prompt": "q", "target": "4"}], "cannot tell the row's format"),
        (["[1, 2]"], "line 1: expected a JSON object per row, found list"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as error:
        list(load_problems(str(path)))
    assert f"train.jsonl {message}" in str(error.value) or message in str(error.value)
    assert "train.jsonl" in str(error.value)


def test_skip_mode_counts_and_keeps_good_rows(tmp_path):
    rows = [{"question": "a", "answer": "#### 1"}, {"question": "b", "answer": "no gold"},
            {"question": "c", "answer": "#### 3"}, "{broken"]
    bad = BadRows()
    problems = list(load_problems(str(write_jsonl(tmp_path / "t.jsonl", rows)), on_bad_row="skip", bad_rows=bad))
    assert [p.gold for p in problems] == ["1", "3"]
    assert len(bad) == 2 and "t.jsonl line 2" in bad.reasons[0] and "t.jsonl line 4" in bad.reasons[1]
    assert bad.summary().startswith("skipped 2 bad rows")


def test_missing_unknown_and_hub_offline_sources(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(load_problems(str(tmp_path / "absent.jsonl")))
    with pytest.raises(DataError, match="unknown data source 'gsm9k'"):
        list(load_problems("gsm9k"))
    start = time.monotonic()
    with pytest.raises(DataError, match="local .jsonl"):
        list(load_problems("gsm8k"))  # the hub is off in tests: a clear message, quickly
    assert time.monotonic() - start < 15


def test_field_map_parquet_and_plain_gold(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mine.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "2+2?", "target": "4", "id": 7},
                                         {"prompt": "Capital of France?", "target": "Paris", "id": 8}]), path)
    problems = list(load_problems(str(path), field_map={"question": "prompt", "gold": "target", "uid": "id"}))
    assert [(p.question, p.gold, p.dataset, p.uid) for p in problems] == [
        ("2+2?", "4", "gsm8k", "7"), ("Capital of France?", "Paris", "exact", "8")]


def test_reasoning_gym_source_is_seeded_and_graded():
    from tracer_pl.answers import is_equivalent

    source = ("reasoning_gym:basic_arithmetic?size=20&max_terms=2&max_digits=1&operators=+,-"
              "&allow_parentheses=false&allow_negation=false")
    first = list(load_problems(source, seed=5))
    assert first == list(load_problems(source, seed=5)) and len(first) == 20
    assert first != list(load_problems(source, seed=6))
    assert first != list(load_problems(source, seed=5, split="test"))  # test problems use another seed
    for p in first:
        left, op, right = p.question.removeprefix("Calculate ").rstrip(".").split(" ", 2)
        expected = int(left) + int(right) if op == "+" else int(left) - int(right)
        assert p.gold == str(expected)  # the gold answer checked independently
        assert is_equivalent(str(expected), p.gold, p.dataset)
        assert not is_equivalent(str(expected + 1), p.gold, p.dataset)
    with pytest.raises(DataError, match="key=value"):
        list(load_problems("reasoning_gym:basic_arithmetic?size"))


def test_generated_test_split_shares_no_item_with_training():
    # reasoning-gym seeds item i with seed + i: a test seed of seed + 1 would reuse 49 of these 50 questions.
    # With 4-digit operands and up to 5 terms a chance collision is negligible, so any overlap is reuse.
    source = "reasoning_gym:basic_arithmetic?size=50&min_terms=3&max_terms=5&min_digits=4&max_digits=4"
    train = {p.question for p in load_problems(source, seed=5, split="train")}
    test = {p.question for p in load_problems(source, seed=5, split="test")}
    assert len(train) == 50 and len(test) == 50
    assert train.isdisjoint(test)


def stream(rank=0, world=1, start=0, seed=1, batch=2, items=11, passes=1):
    return ProblemStream(lambda: iter(range(items)), streamed=False, seed=seed, passes=passes, rank=rank,
                         world_size=world, batch_size=batch, limit=None, shuffle_buffer=4, start=start)


def test_stream_order_passes_and_resume():
    one = list(stream())
    assert len(one) == len(set(one)) == 10 and set(one) <= set(range(11))  # whole batches of 2 only
    assert one == list(stream()) and one != list(stream(seed=2))
    assert list(stream(start=4)) == one[4:]  # resuming skips exactly what was consumed
    two = list(stream(passes=2))
    assert two[:10] == one and len(set(two[10:])) == 10 and two[10:] != one  # pass 2: a new order


def test_rank_shards_are_disjoint_and_equal():
    r0, r1 = list(stream(rank=0, world=2)), list(stream(rank=1, world=2))
    assert len(r0) == len(r1) == 4  # 11 problems, 2 ranks x batches of 2: 8 used, same count on both
    assert not set(r0) & set(r1)


def test_streamed_sources_shuffle_with_a_buffer():
    s = ProblemStream(lambda: iter(range(50)), streamed=True, seed=0, passes=1, rank=0, world_size=1, batch_size=1,
                      limit=None, shuffle_buffer=8, start=0)
    order = list(s)
    assert sorted(order) == list(range(50)) and order != list(range(50))
    assert all(order.index(i) >= i - 7 for i in range(50))  # nothing leaves an 8-slot buffer before it entered


def test_datamodule_sets_names_and_validation(tmp_path):
    dm = ReasoningDataModule(train=str(GSM), test=[str(GSM), str(MATH)], batch_size=3, test_limit=5,
                             train_limit=10)
    dm.setup("test")
    assert dm.test_names == ["test_sample64", "test_sample640"] or dm.test_names[0] != dm.test_names[1]
    loaders = dm.test_dataloader()
    assert [sum(len(b) for b in loader) for loader in loaders] == [5, 5]
    batches = list(dm.train_dataloader())
    assert [len(b) for b in batches] == [3, 3, 3] and batches[0][0].dataset == "gsm8k"
    dm.load_state_dict({"consumed": 6, "seed": 42, "train": str(GSM)})
    assert [p.uid for b in dm.train_dataloader() for p in b] == [p.uid for p in batches[2]]
    with pytest.raises(ConfigError, match="--data.batch_size"):
        ReasoningDataModule(batch_size=0)
    with pytest.raises(ConfigError, match="--data.test is required"):
        ReasoningDataModule(train=str(GSM)).setup("test")


# ---------------------------------------------------------------------- hostile inputs (docs/reliability.md)
@pytest.mark.parametrize(
    "row, answer_format",
    [
        ({"question": "q", "answer": "x #### 12,34"}, None),  # misplaced comma: not 1234
        ({"question": "q", "answer": "x #### 1,2,3"}, None),  # a list: not 123
        ({"question": "q", "answer": "x #### H2O"}, None),  # a formula: not 2
        ({"question": "q", "answer": "x #### B12"}, None),  # a label: not 12
        ({"question": "q", "answer": "x #### 3 or 4"}, None),  # two numbers
        ({"question": "q", "gold": "Python 3"}, "gsm8k"),  # a numeric format was asked for: not 3
        ({"question": "q", "gold": "H2O"}, "gsm8k"),
        ({"question": "q", "gold": "1,2,3"}, "gsm8k"),
    ],
)
def test_a_gold_with_a_number_inside_text_is_a_bad_row(tmp_path, row, answer_format):
    path = write_jsonl(tmp_path / "golds.jsonl", [row])
    with pytest.raises(DataError, match=r"golds.jsonl line 1: .*(number after '####'|number as the gold answer)"):
        list(load_problems(str(path), answer_format=answer_format))
    bad = BadRows()
    assert list(load_problems(str(path), answer_format=answer_format, on_bad_row="skip", bad_rows=bad)) == []
    assert len(bad) == 1


@pytest.mark.parametrize(
    "tail, gold",
    [("1,234", "1234"), ("-3.5", "-3.5"), ("$5", "5"), ("7.", "7"), ("1,450,000", "1450000"), ("+2", "2"),
     ("\\boxed{12}", "12"), ("0.50", "0.5")],
)
def test_clean_golds_are_read_exactly(tmp_path, tail, gold):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": f"work #### {tail}"}])
    assert [p.gold for p in load_problems(str(path))] == [gold]


def test_a_text_gold_stays_text_and_is_graded_as_text(tmp_path):
    from tracer_pl.answers import is_equivalent

    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "gold": "H2O"}, {"question": "q", "gold": "Python 3"},
                                              {"question": "q", "gold": "1,2,3"}])
    problems = list(load_problems(str(path)))
    assert [(p.gold, p.dataset) for p in problems] == [("H2O", "exact"), ("Python 3", "exact"), ("1,2,3", "exact")]
    assert not is_equivalent("2", "H2O", "exact") and is_equivalent("h2o", "H2O", "exact")
    assert not is_equivalent("3", "Python 3", "exact") and not is_equivalent("123", "1,2,3", "exact")


def test_byte_order_mark_and_lone_surrogate(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"question": "q", "answer": "#### 4"}).encode() + b"\n")
    assert [p.gold for p in load_problems(str(jsonl))] == ["4"]
    whole = tmp_path / "bom.json"
    whole.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"question": "q", "gold": "5"}]).encode())
    assert [p.gold for p in load_problems(str(whole))] == ["5"]
    surrogate = write_jsonl(tmp_path / "s.jsonl", ['{"question": "bad \\ud800 text", "answer": "#### 1"}'])
    with pytest.raises(DataError, match=r"s.jsonl line 1: field 'question' .*unpaired surrogate"):
        list(load_problems(str(surrogate)))


@pytest.mark.parametrize("options, message", [
    ("size=abc", "option 'size' must be a whole number >= 1, found 'abc'"),
    ("size=2.5", "option 'size' must be a whole number >= 1, found 2.5"),
    ("size=0", "option 'size' must be a whole number >= 1, found 0"),
    ("size=3&seed=x", "option 'seed' must be a whole number, found 'x'"),
])
def test_generator_options_must_be_whole_numbers(options, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        list(load_problems(f"reasoning_gym:basic_arithmetic?{options}"))


@pytest.mark.parametrize(
    "lines, on_bad_row, message",
    [
        ([], "raise", "0 usable problems, fewer than one training batch of 2"),  # empty file
        (["", "   ", ""], "raise", "0 usable problems"),  # blank lines only
        ([{"question": "q", "answer": "#### 1"}], "raise", "1 usable problems, fewer than one training batch"),
        ([{"question": "q", "answer": "none"}, "{x"], "skip", r"0 usable problems \(2 bad rows skipped\)"),
    ],
)
def test_data_that_fills_no_batch_is_an_error(tmp_path, lines, on_bad_row, message):
    path = tmp_path / "few.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    dm = ReasoningDataModule(train=str(path), batch_size=2, on_bad_row=on_bad_row)
    with pytest.raises(DataError, match=f"few.jsonl: {message}.*--data.batch_size"):
        list(dm.train_dataloader())


def test_rows_skipped_in_training_are_counted_once_and_logged(tmp_path, caplog):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(4)] + [{"question": "q", "answer": "x"}]
    dm = ReasoningDataModule(train=str(write_jsonl(tmp_path / "t.jsonl", rows)), batch_size=2, passes=2,
                             on_bad_row="skip")
    with caplog.at_level("WARNING"):
        batches = list(dm.train_dataloader())
    assert len(batches) == 4 and dm.train_skipped == 1  # per pass, not once per pass summed
    assert "t.jsonl line 5" in caplog.text and "skipped" in caplog.text


def saved_position(dm):
    state = dm.state_dict()
    return {"consumed": 2, "settings": state["settings"]}


@pytest.mark.parametrize("change, flag", [
    (dict(batch_size=1), "--data.batch_size"), (dict(seed=1), "--data.seed"), (dict(passes=2), "--data.passes"),
    (dict(train_limit=3), "--data.train_limit"), (dict(field_map={"question": "question"}), "--data.field_map"),
])
def test_resuming_with_other_data_settings_is_refused(tmp_path, change, flag):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(6)])
    saved = saved_position(ReasoningDataModule(train=str(path), batch_size=2))
    with pytest.raises(ConfigError, match=f"^{flag}: the checkpoint was saved with"):
        ReasoningDataModule(train=str(path), **{"batch_size": 2, **change}).load_state_dict(saved)
    safe = ReasoningDataModule(train=str(path), batch_size=2, test=str(path), test_limit=1, eval_batch_size=5)
    safe.load_state_dict(saved)  # evaluation settings do not move the training position
    assert [p.gold for b in safe.train_dataloader() for p in b] and safe.state_dict()["consumed"] == 2


def test_resuming_with_an_edited_data_file_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(6)])
    saved = saved_position(ReasoningDataModule(train=str(path), batch_size=2))
    write_jsonl(path, [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(7)])  # a row added
    with pytest.raises(ConfigError, match="^--data.train_file_sha256: the checkpoint was saved with"):
        ReasoningDataModule(train=str(path), batch_size=2).load_state_dict(saved)


def test_a_megabyte_question_is_a_bad_row_not_a_hang(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"question": "x" * 1_000_000, "answer": "#### 1"}])
    start = time.monotonic()
    with pytest.raises(DataError, match="big.jsonl line 1: field 'question' has 1,000,000 characters, more than"):
        list(load_problems(str(path)))
    assert time.monotonic() - start < 5
