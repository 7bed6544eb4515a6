"""The data module: seeded streaming, rank shards, batches that must fill, and a resumable position."""

import json

import pytest

from tests.helpers.paths import GSM, MATH
from tests.helpers.problems import write_jsonl
from tracer_pl.data.datamodule import ProblemStream, ReasoningDataModule
from tracer_pl.errors import ConfigError, DataError


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
                             train_limit=10, shuffle=True)  # the state dict below predates --data.shuffle
    dm.setup("test")
    assert dm.test_names == ["test_sample64", "test_sample640"] or dm.test_names[0] != dm.test_names[1]
    loaders = dm.test_dataloader()
    assert [sum(len(b) for b in loader) for loader in loaders] == [5, 5]
    batches = list(dm.train_dataloader())
    assert [len(b) for b in batches] == [3, 3, 3] and batches[0][0].dataset == "gsm8k"
    dm.load_state_dict({"consumed": 6, "seed": 42, "train": str(GSM)})
    assert [p.uid for b in dm.train_dataloader() for p in b] == [p.uid for p in batches[2]]
    in_file_order = ReasoningDataModule(train=str(GSM), batch_size=3, train_limit=10)
    with pytest.raises(ConfigError, match="--data.shuffle"):  # an old checkpoint trained shuffled
        in_file_order.load_state_dict({"consumed": 6, "seed": 42, "train": str(GSM)})
    with pytest.raises(ConfigError, match="--data.batch_size"):
        ReasoningDataModule(batch_size=0)
    with pytest.raises(ConfigError, match="--data.test is required"):
        ReasoningDataModule(train=str(GSM)).setup("test")


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


@pytest.mark.parametrize("lines, on_bad_row, message", [
    (None, "raise", "t.jsonl: no such file"),
    (["{x"], "raise", "t.jsonl line 1: invalid JSON"),
    ([{"question": "q", "answer": "four"}], "raise", "t.jsonl line 1: field 'answer' expected"),
    ([{"question": "q", "answer": "four"}, {"question": "q", "answer": "#### 4"}], "skip", None),
    ([{"question": "q", "answer": "#### 4"}], "raise", None),  # one problem: enough to start (the stream counts)
])
def test_setup_for_fit_reads_the_training_source_first(tmp_path, lines, on_bad_row, message):
    path = tmp_path / "t.jsonl"
    if lines is not None:
        write_jsonl(path, [x if isinstance(x, str) else json.dumps(x) for x in lines])
    dm = ReasoningDataModule(train=str(path), batch_size=2, on_bad_row=on_bad_row)
    if message is None:
        dm.setup("fit")
        assert len(dm.bad_rows) == 0  # skipped rows are counted once, by the stream that trains on them
    else:
        with pytest.raises(DataError, match=message):
            dm.setup("fit")


def test_training_problems_come_in_the_source_order_unless_shuffled():
    file_order = [json.loads(line)["question"] for line in GSM.read_text().splitlines()[:9]]
    plain = ReasoningDataModule(train=str(GSM), batch_size=3, train_limit=9, passes=2)
    questions = [p.question for b in plain.train_dataloader() for p in b]
    assert questions == file_order * 2  # every pass in the file's order
    shuffled = ReasoningDataModule(train=str(GSM), batch_size=3, train_limit=9, passes=2, shuffle=True)
    mixed = [p.question for b in shuffled.train_dataloader() for p in b]
    assert sorted(mixed[:9]) == sorted(file_order) and mixed[:9] != file_order and mixed[:9] != mixed[9:]
