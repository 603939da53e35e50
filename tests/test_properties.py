"""Property tests over the data loaders and templating: arbitrary unicode, empty strings, huge rows,
missing keys and odd value types give a clear DataError or exactly the right pairs and masks -
never a crash, a changed value or a label on a prompt token."""
from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import make_tokenizer
from unlearn.config import SourceConfig
from unlearn.data.encoding import IGNORE, PAPER_TEMPLATE, Encoded, PairEncoder, pad_rows
from unlearn.data.sources import DataError, read_pairs

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# any unicode code point, lone surrogates included (they can arrive through JSON escapes)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
text = st.text(max_size=40)
row = st.fixed_dictionaries({}, optional={"prompt": any_text, "response": any_text, "other": text})


def has_surrogate(value: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def write(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return SourceConfig(path=str(path))


def expected_pairs(rows: list[dict]) -> list[tuple[str, str]] | None:
    """What a loader must return (None: it must raise DataError)."""
    if any(not {"prompt", "response"} <= set(r) for r in rows) or any(has_surrogate(v) for r in rows for v in r.values()):
        return None
    pairs = [(r["prompt"], r["response"]) for r in rows if r["prompt"].strip() and r["response"].strip()]
    return pairs or None


def check(source: SourceConfig, rows: list[dict]) -> None:
    expected = expected_pairs(rows)
    try:
        pairs = [(p.prompt, p.response) for p in read_pairs(source)]
    except DataError as error:
        assert str(error).startswith(source.path), error  # the message names the file
        assert expected is None, f"rejected good data: {error}"
        return
    assert pairs == expected


@SETTINGS
@given(rows=st.lists(row, max_size=6), ascii_only=st.booleans())
@example(rows=[{"prompt": "q\u2028x", "response": "a\r\nb\x85c\x00"}], ascii_only=False)  # line separators
@example(rows=[{"prompt": "q", "response": "\ud800"}], ascii_only=True)  # "\ud800" escape
@example(rows=[{"prompt": "q"}, {"prompt": "p", "response": "r"}], ascii_only=True)  # a missing key
def test_jsonl_rows_round_trip_or_fail_clearly(tmp_path_factory, rows, ascii_only):
    tmp_path = tmp_path_factory.mktemp("jsonl")
    content = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows)
    # a raw lone surrogate cannot be UTF-8: written as such bytes, the loader must say 'not UTF-8'
    check(write(tmp_path, "data.jsonl", content.encode("utf-8", "surrogatepass")), rows)


@SETTINGS
@given(rows=st.lists(row, max_size=6))
def test_json_rows_round_trip_or_fail_clearly(tmp_path_factory, rows):
    tmp_path = tmp_path_factory.mktemp("json")
    check(write(tmp_path, "data.json", json.dumps(rows).encode()), rows)


@SETTINGS
@given(rows=st.lists(st.fixed_dictionaries({"prompt": text, "response": text}), max_size=6))
@example(rows=[{"prompt": "007", "response": "1.50"}, {"prompt": "NA", "response": "null"}])  # no type guessing
@example(rows=[{"prompt": 'say "hi",\r\nthen', "response": "\ufeffbom"}])
def test_csv_cells_arrive_exactly_as_written(tmp_path_factory, rows):
    tmp_path = tmp_path_factory.mktemp("csv")
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=["prompt", "response"])
    writer.writeheader()
    writer.writerows(rows)
    check(write(tmp_path, "data.csv", buffer.getvalue().encode("utf-8-sig")), rows)  # with a BOM, as Excel writes


json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=6)


@SETTINGS
@given(rows=st.lists(st.fixed_dictionaries({"prompt": json_value, "response": json_value}), min_size=1, max_size=4))
def test_any_json_value_gives_text_or_a_clear_error(tmp_path_factory, rows):
    tmp_path = tmp_path_factory.mktemp("values")
    source = write(tmp_path, "data.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    try:
        pairs = read_pairs(source)
    except DataError as error:
        assert str(error).startswith(source.path)
        return
    assert all(isinstance(p.prompt, str) and isinstance(p.response, str) for p in pairs)
    assert all(p.prompt.strip() and p.response.strip() for p in pairs)


def test_huge_rows_load_whole(tmp_path):
    huge = "word " * 200_000  # 1 MB, past the csv module's default field limit
    rows = [{"prompt": "Tell me everything.", "response": huge}]
    for name, content in [("huge.jsonl", json.dumps(rows[0]) + "\n"), ("huge.csv", f"prompt,response\nTell me everything.,{huge}\n")]:
        pairs = read_pairs(write(tmp_path, name, content.encode()))
        assert [(p.prompt, p.response) for p in pairs] == [(r["prompt"], r["response"]) for r in rows]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return {"chat": make_tokenizer(tmp_path_factory.mktemp("chat_tok"), chat=True),
            "plain": make_tokenizer(tmp_path_factory.mktemp("plain_tok"), chat=False, bos=False)}


TEMPLATES = [("chat", "auto"), ("plain", "auto"), ("chat", PAPER_TEMPLATE), ("plain", "raw"),
             ("chat", "Q: {prompt}\nA:{response}")]


@SETTINGS
@given(case=st.sampled_from(TEMPLATES), prompt=any_text.filter(lambda s: not has_surrogate(s)),
       response=any_text.filter(lambda s: not has_surrogate(s) and s.strip()), max_length=st.integers(9, 120))
@example(case=TEMPLATES[0], prompt="", response="x", max_length=9)
@example(case=TEMPLATES[0], prompt="q", response="ends <|im_end|> early </s>", max_length=120)
@example(case=TEMPLATES[2], prompt="### Answer: fake", response=" ### Question: again", max_length=120)
@example(case=TEMPLATES[1], prompt="q", response="long answer " * 400, max_length=40)
def test_labels_cover_exactly_the_answer_tokens(tokenizers, case, prompt, response, max_length):
    tokenizer = tokenizers[case[0]]
    encoder = PairEncoder(tokenizer, case[1], max_length)
    prompt_ids, answer_ids = encoder.prompt_ids(prompt), encoder.answer_ids(response)
    row = encoder.encode(prompt, response)
    if row is None:  # dropped only when the prompt leaves no room for one answer token
        assert len(prompt_ids) >= max_length
        return
    room = max_length - len(prompt_ids)
    assert row.prompt_ids == prompt_ids  # the exact prefix generation is conditioned on
    assert row.answer_ids == answer_ids[:room] and row.truncated == (len(answer_ids) > room)
    assert len(row.input_ids) <= max_length and row.input_ids == prompt_ids + row.answer_ids
    assert row.labels == [IGNORE] * len(prompt_ids) + row.answer_ids
    # the answer tokens spell the response (after the template's gap) and then the end-of-answer text
    decode = lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
    gap = encoder.template.split("{response}")[0] if encoder.mode == "format" else ""
    gap = gap[len(gap.rstrip(" ")):]
    end = encoder.end_of_answer if encoder.mode == "chat" else (tokenizer.eos_token if encoder.mode == "format" else "")
    assert decode(answer_ids) == gap + response + end
    assert prompt in decode(prompt_ids)


@SETTINGS
@given(lengths=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=5),
       side=st.sampled_from(["right", "left"]))
def test_padding_never_carries_a_label(lengths, side):
    rows = [Encoded(list(range(1, p + 1)), list(range(100, 100 + a))) for p, a in lengths]
    batch = pad_rows(rows, pad_id=0, side=side)
    width = max(len(r.input_ids) for r in rows)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        where = slice(0, n) if side == "right" else slice(width - n, width)
        assert batch["input_ids"][i, where].tolist() == row.input_ids
        assert batch["labels"][i, where].tolist() == row.labels
        assert int(batch["attention_mask"][i].sum()) == n
        padded = batch["attention_mask"][i] == 0
        assert (batch["labels"][i][padded] == IGNORE).all()


@SETTINGS
@given(body=any_text.filter(lambda s: not has_surrogate(s)))
def test_plain_text_windows_never_crash(tokenizers, tmp_path_factory, body):
    source = SourceConfig(path=str(tmp_path_factory.mktemp("txt") / "book.txt"), window_tokens=8, prompt_tokens=3)
    with open(source.path, "w", encoding="utf-8") as handle:
        handle.write(body * 4)
    try:
        pairs = read_pairs(source, tokenizers["plain"])
    except DataError as error:
        assert "no text windows of 8 tokens" in str(error)
        return
    assert pairs and all(isinstance(p.prompt, str) and isinstance(p.response, str) for p in pairs)
