"""Hostile data: bad bytes deep in large files, field maps with typos, worked solutions as golds, generator options,
JSON that Python's reader cannot take, and evaluation sets whose names collide."""

import json

import pytest

from tests.helpers.paths import GSM
from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.data.sources import BadRows, load_problems
from tracer_pl.errors import ConfigError, DataError


def problems(source, **options):
    return list(load_problems(str(source), **options))


def test_a_bad_byte_deep_in_a_large_file_names_its_line_and_is_skipped_alone(tmp_path):
    path = tmp_path / "big.jsonl"
    filler = "x" * 1600  # 6000 lines of about 1.6 kB: a 10 MB file, far beyond one decoding block
    lines = [json.dumps({"question": f"what is {i} plus 0? {filler}", "gold": str(i)}).encode() for i in range(1, 6001)]
    lines[4999] = lines[4999].replace(b"plus", b"pl\xffs")  # line 5000
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert path.stat().st_size > 9_000_000
    with pytest.raises(DataError, match=r"^big\.jsonl line 5000: not UTF-8 text \(invalid start byte at byte \d+ "
                                        r"of the line\)$"):
        problems(path)
    bad = BadRows()
    kept = problems(path, on_bad_row="skip", bad_rows=bad)
    assert len(kept) == 5999 and "5000" not in {p.gold for p in kept} and kept[-1].gold == "6000"
    assert [reason.split(":")[0] for reason in bad.reasons] == ["big.jsonl line 5000"]


@pytest.mark.parametrize("line, reason", [
    ("[" * 100_000 + "]" * 100_000, "invalid JSON (nested too deeply to read)"),  # was a RecursionError
    ('{"question": "q", "gold": ' + "7" * 5000 + "}", "invalid JSON (Exceeds the limit"),  # was a ValueError
    ('{"question": "q", "gold": "1", "gold": "2"}', "the key 'gold' is given twice in one object"),  # kept "2"
])
def test_json_that_python_cannot_take_as_it_is_is_one_bad_row(tmp_path, line, reason):
    path = tmp_path / "rows.jsonl"
    path.write_text(f'{{"question": "a", "gold": "5"}}\n{line}\n{{"question": "b", "gold": "6"}}\n')
    with pytest.raises(DataError) as error:
        problems(path)
    assert str(error.value).startswith(f"rows.jsonl line 2: {reason}")
    bad = BadRows()
    assert [p.gold for p in problems(path, on_bad_row="skip", bad_rows=bad)] == ["5", "6"] and len(bad) == 1


def test_lines_ended_by_carriage_returns_alone_are_still_lines(tmp_path):
    path = tmp_path / "cr.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "a", "gold": "1"}\r{"question": "b", "gold": "2"}\r\n\r'
                     b'{"question": "c", "gold": "x"}\n')
    bad = BadRows()
    assert [p.gold for p in problems(path, answer_format="gsm8k", on_bad_row="skip", bad_rows=bad)] == ["1", "2"]
    assert bad.reasons[0].startswith("cr.jsonl line 4: ")  # the line a text editor shows


@pytest.mark.parametrize("field_map, named", [
    ({"questoin": "q"}, "unknown key 'questoin'"),
    ({"question": "q", "answer": "a"}, "unknown key 'answer'"),
    ({"gold": ""}, "'gold' must name a column, got ''"),
    ({"uid": 3}, "'uid' must name a column, got 3"),
])
def test_a_field_map_with_an_unknown_key_or_no_column_is_refused(tmp_path, field_map, named):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"q": "x", "question": "y", "gold": "1"}\n')
    with pytest.raises(ConfigError) as error:
        problems(path, field_map=field_map)
    assert named in str(error.value) and str(error.value).startswith("--data.field_map")
    if "unknown" in named:
        assert "question, gold, uid" in str(error.value)


def test_a_worked_solution_mapped_as_the_gold_gives_its_final_answer(tmp_path):
    """``{gold: answer}`` on GSM8K grades against the number after ``####`` (what the benchmark grades), not the text
    of the whole solution; the last box of a MATH solution likewise."""
    gsm = problems(GSM, field_map={"question": "question", "gold": "answer"})
    first = json.loads(GSM.read_text().splitlines()[0])
    assert (gsm[0].gold, gsm[0].dataset) == (first["answer"].rsplit("####", 1)[1].strip(), "gsm8k")
    assert all("####" not in p.gold for p in gsm) and len(gsm) == 64
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps({"p": "x?", "s": "Then $x = \\boxed{\\frac{1}{2}}$."}) + "\n"
                    + json.dumps({"p": "y?", "s": "So y is \\boxed{1,234}."}) + "\n"
                    + json.dumps({"p": "z?", "s": "Work... #### 12 apples"}) + "\n")
    bad = BadRows()
    got = problems(path, field_map={"question": "p", "gold": "s"}, on_bad_row="skip", bad_rows=bad)
    assert [(p.gold, p.dataset) for p in got] == [("\\frac{1}{2}", "math500"), ("1234", "gsm8k")]
    assert bad.reasons == ["math.jsonl line 3: field 's' expected a number after '####', found '12 apples'"]


@pytest.mark.parametrize("source, message", [
    ("reasoning_gym:basic_arithmetic?size=4&bogus=1", "'basic_arithmetic' has no option 'bogus'; its options are "
                                                      "size, seed, min_terms, max_terms"),
    ("reasoning_gym:basic_arithmetic?size=4&max_term=2", "has no option 'max_term'"),
    ("reasoning_gym:basic_arithmetic?size=4&size=5", "option 'size' is given more than once"),
    ("reasoning_gym:basic_arithmetc?size=2", "reasoning-gym has no task 'basic_arithmetc' (106 tasks; did you mean "
                                             "basic_arithmetic"),
])
def test_generator_options_and_tasks_it_does_not_have_are_refused_naming_what_it_has(source, message):
    with pytest.raises(DataError) as error:
        problems(source)
    assert str(error.value).startswith(source + ": ") and message in str(error.value)


def test_evaluation_sets_of_the_same_name_are_named_apart(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    paths = [tmp_path / "a" / "x.jsonl", tmp_path / "b" / "x.jsonl", tmp_path / "x1.jsonl", tmp_path / "x0.jsonl"]
    for path in paths:
        path.write_text('{"question": "q", "gold": "1"}\n')
    for order in (paths[:3], [paths[2], paths[0], paths[1]], [paths[3], paths[0], paths[1], paths[2]]):
        names = ReasoningDataModule(test=[str(p) for p in order]).test_names
        assert len(set(names)) == len(names), names  # each set has its own metric keys and records file
        for path, name in zip(order, names):
            if path.stem in ("x1", "x0"):
                assert name == path.stem  # a set whose name is its own keeps it
    with pytest.raises(ConfigError, match=r"--data.test names '.*x1.jsonl' more than once"):
        ReasoningDataModule(test=[str(paths[2]), str(paths[0]), str(paths[2])])


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": "2"}, "--data.batch_size must be a whole number, got '2'"),  # was a TypeError
    ({"passes": 1.5}, "--data.passes must be a whole number, got 1.5"),
    ({"on_bad_row": "ignore"}, "--data.on_bad_row must be raise or skip, got 'ignore'"),  # was skip, in silence
    ({"field_map": {"questoin": "q"}}, "--data.field_map: unknown key 'questoin'"),
    ({"field_map": ["question"]}, "--data.field_map must map question/gold/uid to column names"),  # AttributeError
    ({"train": ""}, "--data.train must name a source"),
    ({"test": ["x.jsonl", " "]}, "--data.test must name a source"),
])
def test_data_settings_of_the_wrong_kind_are_refused_when_the_data_module_is_built(settings, message):
    with pytest.raises(ConfigError) as error:
        ReasoningDataModule(**settings)
    assert str(error.value).startswith(message)


def test_sources_given_as_path_objects_are_read(tmp_path):
    from pathlib import Path

    data = ReasoningDataModule(train=Path(GSM), test=Path(GSM), batch_size=2)  # was an AttributeError in setup
    assert data.train == str(GSM) and data.test == [str(GSM)]
    assert len(problems(Path(GSM))) == len(list(load_problems(Path(GSM)))) == 64


def test_a_row_of_a_json_file_that_is_not_an_object_is_one_bad_row_and_names_beyond_ascii_are_read(tmp_path):
    path = tmp_path / "données 数据.json"
    path.write_text('[{"question": "√16 = ?", "gold": "4"}, 5, {"question": "b", "gold": "6"}]', encoding="utf-8")
    bad = BadRows()  # the whole file was refused before
    assert [p.gold for p in problems(path, on_bad_row="skip", bad_rows=bad)] == ["4", "6"]
    assert bad.reasons == ["données 数据.json row 2: expected a JSON object per row, found int"]


def test_a_utf16_file_is_refused_at_its_first_line(tmp_path):
    path = tmp_path / "wide.jsonl"
    path.write_bytes('{"question": "a", "gold": "1"}\n'.encode("utf-16"))
    with pytest.raises(DataError, match=r"^wide\.jsonl line 1: not UTF-8 text"):
        problems(path)
