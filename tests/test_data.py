"""Data: answer-only label masks, truncation, and the step batch composition."""
from __future__ import annotations

import csv
import logging
from collections import Counter

import pytest
import torch

from conftest import write_jsonl
from unlearn.config import DataConfig, SourceConfig
from unlearn.data.batches import UnlearnData, build_data, encode_source
from unlearn.data.encoding import IGNORE, PAPER_TEMPLATE, Encoded, PairEncoder, pad_rows
from unlearn.data.sources import DataError, read_pairs
from unlearn.models.loading import load_tokenizer

PROMPT, RESPONSE = "How do I pick a lock?", "Here is how to pick a lock with a pin."


@pytest.fixture(scope="module")
def tokenizers(tiny_llama, tiny_gpt2, tiny_opt):
    """Loaded the way a run loads them (pad token filled in for Llama-style tokenizers)."""
    return {"llama": load_tokenizer(str(tiny_llama)), "gpt2": load_tokenizer(str(tiny_gpt2)),
            "opt": load_tokenizer(str(tiny_opt))}


CASES = [("llama", "auto"), ("llama", PAPER_TEMPLATE), ("llama", "raw"),
         ("gpt2", "auto"), ("gpt2", "Q: {prompt} A: {response}"), ("gpt2", "raw"),
         ("opt", "auto"), ("opt", "raw")]


@pytest.mark.parametrize("arch,template", CASES)
def test_labels_cover_exactly_the_answer(tokenizers, arch, template):
    tokenizer = tokenizers[arch]
    encoder = PairEncoder(tokenizer, template, max_length=128)
    row = encoder.encode(PROMPT, RESPONSE)
    n_prompt = len(row.prompt_ids)
    assert row.input_ids == row.prompt_ids + row.answer_ids
    assert row.labels[:n_prompt] == [IGNORE] * n_prompt  # prompt (template included) carries no loss
    assert row.labels[n_prompt:] == row.answer_ids  # every answer token does, the first one included
    assert IGNORE not in row.answer_ids
    # the prompt ids are exactly what generation would be conditioned on
    assert row.prompt_ids == encoder.prompt_ids(PROMPT)

    if encoder.mode == "chat":  # llama fixture: a chat template
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert row.answer_ids[-1] == end  # the answer ends with the end-of-turn token
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": RESPONSE}], tokenize=False)
        assert tokenizer.decode(row.input_ids) == rendered.rstrip()
        assert row.answer_ids[0] == tokenizer(RESPONSE, add_special_tokens=False)["input_ids"][0]
    elif encoder.mode == "format":  # gpt2/opt have no chat template: 'auto' falls back to the paper's
        fmt = PAPER_TEMPLATE if template == "auto" else template
        assert row.answer_ids[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(row.input_ids, skip_special_tokens=True)
        assert text == fmt.format(prompt=PROMPT, response=RESPONSE)
        # the first answer token is the response's first word, with the format's space attached
        gap = " " + RESPONSE
        assert row.answer_ids[0] == tokenizer(gap, add_special_tokens=False)["input_ids"][0]
        assert tokenizer.decode(row.answer_ids, skip_special_tokens=True) == " " + RESPONSE
    else:  # raw continuation: no end token appended
        assert tokenizer.decode(row.input_ids, skip_special_tokens=True) == PROMPT + RESPONSE
        assert row.answer_ids == tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    # BOS: written once, by the template or by the tokenizer
    if tokenizer.bos_token_id is not None and arch != "gpt2":
        assert row.input_ids.count(tokenizer.bos_token_id) == (0 if encoder.mode == "chat" else 1)


def test_auto_template_picks_chat_or_paper_format(tokenizers):
    assert PairEncoder(tokenizers["llama"]).mode == "chat"
    assert PairEncoder(tokenizers["llama"]).end_of_answer == "<|im_end|>"
    assert PairEncoder(tokenizers["opt"]).template == PAPER_TEMPLATE


def test_pad_rows_by_hand():
    rows = [Encoded([5, 6], [7]), Encoded([5], [8, 9, 10])]
    right = pad_rows(rows, pad_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7, 0], [5, 8, 9, 10]]
    assert right["labels"].tolist() == [[IGNORE, IGNORE, 7, IGNORE], [IGNORE, 8, 9, 10]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    left = pad_rows(rows, pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[0, 5, 6, 7], [5, 8, 9, 10]]
    assert left["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 7], [IGNORE, 8, 9, 10]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]


def test_eos_answer_token_keeps_its_loss_when_pad_is_eos(tokenizers):
    """Llama-style tokenizers pad with EOS: masks come from the labels, not from `id != pad`."""
    tokenizer = tokenizers["llama"]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    encoder = PairEncoder(tokenizer, PAPER_TEMPLATE, 128)
    short, long = encoder.encode("Hi", "Paris."), encoder.encode(PROMPT, RESPONSE)
    batch = pad_rows([short, long], tokenizer.pad_token_id)
    n = len(short.input_ids)
    assert batch["labels"][0, n - 1] == tokenizer.eos_token_id  # the answer's own EOS is trained
    assert (batch["labels"][0, n:] == IGNORE).all()  # padding, the same id, is not
    assert (batch["attention_mask"][0, n:] == 0).all()
    assert batch["labels"][0, len(short.prompt_ids)] == short.answer_ids[0]


def test_truncation_keeps_an_answer_token_or_drops_the_row(tokenizers):
    encoder = PairEncoder(tokenizers["opt"], PAPER_TEMPLATE, max_length=128)
    prompt_ids, answer_ids = encoder.prompt_ids(PROMPT), encoder.answer_ids(RESPONSE)
    cut = PairEncoder(tokenizers["opt"], PAPER_TEMPLATE, max_length=len(prompt_ids) + 2).encode(PROMPT, RESPONSE)
    assert cut.truncated and cut.prompt_ids == prompt_ids and cut.answer_ids == answer_ids[:2]
    one = PairEncoder(tokenizers["opt"], PAPER_TEMPLATE, max_length=len(prompt_ids) + 1).encode(PROMPT, RESPONSE)
    assert one.answer_ids == answer_ids[:1] and one.labels[-1] == answer_ids[0]
    assert PairEncoder(tokenizers["opt"], PAPER_TEMPLATE, max_length=len(prompt_ids)).encode(PROMPT, RESPONSE) is None
    exact = PairEncoder(tokenizers["opt"], PAPER_TEMPLATE, max_length=len(prompt_ids) + len(answer_ids))
    assert not exact.encode(PROMPT, RESPONSE).truncated


def test_encode_source_counts_truncated_and_dropped_rows(tokenizers, tmp_path, caplog):
    tokenizer = tokenizers["llama"]
    rows = [{"q": "Hi", "a": "Paris."},
            {"q": "Hi", "a": "The capital of France is Paris. " * 8},  # answer too long: truncated
            {"q": "Who wrote the play Hamlet? " * 10, "a": "Shakespeare."}]  # prompt too long: dropped
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    data = DataConfig(forget={"path": str(path), "prompt": "q", "response": "a"}, normal=[{"path": str(path)}],
                      max_length=40)
    with caplog.at_level(logging.WARNING):
        pairs, encoded = encode_source(data.forget, tokenizer, data)
    assert [p.prompt for p in pairs] == ["Hi", "Hi"]
    assert [len(e.input_ids) <= 40 for e in encoded] == [True, True]
    assert [e.truncated for e in encoded] == [False, True]
    assert "1 rows truncated to max_length=40, 1 dropped" in caplog.text
    tight = data.model_copy(update={"max_length": 9})
    with pytest.raises(DataError, match="every row is longer"):
        encode_source(tight.forget.model_copy(update={"path": str(write_jsonl(tmp_path / "long.jsonl", rows[2:]))}),
                      tokenizer, tight)


def test_read_pairs_field_mapping_and_errors(tmp_path):
    path = tmp_path / "normal.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Question", "Best Answer"])
        writer.writeheader()
        writer.writerows([{"Question": "Q1?", "Best Answer": "A1."}, {"Question": "Q2?", "Best Answer": ""},
                          {"Question": "Q3?", "Best Answer": "A3."}])
    pairs = read_pairs(SourceConfig(path=str(path), prompt="Question", response="Best Answer"))
    assert [(p.prompt, p.response) for p in pairs] == [("Q1?", "A1."), ("Q3?", "A3.")]  # empty answer skipped
    skipped = read_pairs(SourceConfig(path=str(path), prompt="Question", response="Best Answer", skip=1, limit=1))
    assert [p.prompt for p in skipped] == ["Q3?"]
    with pytest.raises(DataError, match="unknown field 'answer'; fields are: Question, Best Answer"):
        read_pairs(SourceConfig(path=str(path), prompt="Question", response="answer"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        read_pairs(SourceConfig(path=str(bad)))


def test_json_lines_inside_a_json_file_are_read_as_published_by_tofu(tmp_path):
    lines = tmp_path / "forget.json"  # TOFU publishes its sets as one object per line, extension .json
    lines.write_text('{"question": "Q1?", "answer": "A1."}\n{"question": "Q2?", "answer": "A2."}\n')
    pairs = read_pairs(SourceConfig(path=str(lines), prompt="question", response="answer"))
    assert [(p.prompt, p.response) for p in pairs] == [("Q1?", "A1."), ("Q2?", "A2.")]
    lines.write_text('{"question": "Q1?", "answer": "A1."}\n{"question": "Q2?", "answer": \n')
    with pytest.raises(DataError, match=r"forget.json:2: malformed JSON"):  # the bad line, not "Extra data"
        read_pairs(SourceConfig(path=str(lines), prompt="question", response="answer"))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "Q1?", "answer": "A1."},\n')
    with pytest.raises(DataError, match=r"broken.json:2: malformed JSON"):
        read_pairs(SourceConfig(path=str(broken), prompt="question", response="answer"))


def test_text_windows_split_on_token_boundaries(tokenizers, tmp_path):
    tokenizer = tokenizers["llama"]
    text = tmp_path / "book.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n\n" * 6)
    source = SourceConfig(path=str(text), window_tokens=20, prompt_tokens=6)
    ids = tokenizer(" ".join(text.read_text().split()), add_special_tokens=False)["input_ids"]
    pairs = read_pairs(source, tokenizer)
    assert len(pairs) == len(ids) // 20
    assert pairs[1].prompt == tokenizer.decode(ids[20:26]) and pairs[1].response == tokenizer.decode(ids[26:40])
    # plain text is encoded raw (a continuation), whatever data.template says
    data = DataConfig(forget=source, normal=[source], template=PAPER_TEMPLATE, max_length=64)
    _, encoded = encode_source(source, tokenizer, data)
    assert encoded[1].prompt_ids == [tokenizer.bos_token_id] + ids[20:26]
    assert encoded[1].answer_ids == ids[26:40]


# --- the step batch ------------------------------------------------------------------------------

def synthetic_data(seed=3, forget_rows=5, normal=((6, 1.0),), pool=7, batch_size=2, normal_batch_size=2,
                   mismatch_k=3, max_length=64) -> UnlearnData:
    """Rows whose ids say where they come from: forget 100+i -> 200+i, normal source s row i ->
    1000*(s+1)+i, pool answers 500+j."""
    forget = [Encoded([100 + i], [200 + i]) for i in range(forget_rows)]
    sources = [[Encoded([1000 * (s + 1) + i], [1000 * (s + 1) + 500 + i]) for i in range(n)]
               for s, (n, _) in enumerate(normal)]
    pool_answers = [[500 + j, 600 + j] for j in range(pool)]
    return UnlearnData(forget, sources, [w for _, w in normal], pool_answers, pad_id=0, max_length=max_length,
                       seed=seed, batch_size=batch_size, normal_batch_size=normal_batch_size, mismatch_k=mismatch_k)


def _rows(batch, group):
    return [(batch.input_ids[i][batch.attention_mask[i].bool()].tolist(), batch.labels[i].tolist())
            for i, g in enumerate(batch.row_group) if g == group]


def test_step_batch_is_a_function_of_seed_and_step():
    first, second = synthetic_data(), synthetic_data()
    for step in (9, 0, 4):  # a different visiting order: no hidden sampler state
        a, b = first.step_batch(step), second.step_batch(step)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert a.row_group == b.row_group
    assert torch.equal(first.step_batch(4).input_ids, synthetic_data().step_batch(4).input_ids)
    other_seed = synthetic_data(seed=4)
    assert any(not torch.equal(first.step_batch(s).input_ids, other_seed.step_batch(s).input_ids) for s in range(5))


def test_forget_rows_shuffled_per_epoch_and_all_visited():
    data = synthetic_data(forget_rows=5, batch_size=2)
    order = [i for step in range(25) for i in data.forget_indices(step)]  # 10 epochs of 5 rows
    epochs = [order[e * 5:(e + 1) * 5] for e in range(10)]
    assert all(sorted(epoch) == [0, 1, 2, 3, 4] for epoch in epochs)  # each epoch visits every row once
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled, not one fixed order
    assert epochs[0] != [0, 1, 2, 3, 4] or epochs[1] != [0, 1, 2, 3, 4]
    # the batch holds exactly those rows, first in the batch
    batch = data.step_batch(3)
    assert [ids for ids, _ in _rows(batch, "forget")] == [[100 + i, 200 + i] for i in data.forget_indices(3)]
    assert batch.row_group[:2] == ["forget", "forget"]


def test_mismatch_rows_are_forget_prompts_with_pool_answers():
    data = synthetic_data(mismatch_k=3)
    batch = data.step_batch(2)
    forget_prompts = [[100 + i] for i in data.forget_indices(2)]
    mismatch = _rows(batch, "mismatch")
    assert len(mismatch) == 2 * 3
    pool = {(500 + j, 600 + j) for j in range(7)}
    for n, (ids, labels) in enumerate(mismatch):
        prompt = forget_prompts[n // 3]  # K rows per forget row, in forget-row order
        assert ids[:1] == prompt and tuple(ids[1:]) in pool
        assert labels[:3] == [IGNORE] + ids[1:]  # prompt masked, pool answer trained
    used = Counter(tuple(ids[1:]) for s in range(30) for ids, _ in _rows(data.step_batch(s), "mismatch"))
    assert len(used) == 7  # answers drawn from the whole pool


def test_mismatch_answers_are_cut_to_max_length():
    data = UnlearnData([Encoded([1, 2, 3], [4])], [[Encoded([5], [6])]], [1.0], [[7, 8, 9, 10]], pad_id=0,
                       max_length=5, seed=0, batch_size=1, normal_batch_size=1, mismatch_k=1)
    assert _rows(data.step_batch(0), "mismatch")[0][0] == [1, 2, 3, 7, 8]


def test_guard_rows_pair_each_normal_prompt_with_a_guard_answer():
    plain = synthetic_data(normal=((6, 1.0),), normal_batch_size=3, mismatch_k=2)
    guarded = synthetic_data(normal=((6, 1.0),), normal_batch_size=3, mismatch_k=2)
    guarded.guard_answers = [[900], [901, 902]]
    for step in range(4):
        a, b = plain.step_batch(step), guarded.step_batch(step)
        assert "guard" not in a.row_group
        for group in ("forget", "mismatch", "normal"):  # the other rows are the same with or without guards
            assert _rows(a, group) == _rows(b, group)
        normal, guard = _rows(b, "normal"), _rows(b, "guard")
        assert len(guard) == len(normal) == 3
        for (n_ids, _), (g_ids, g_labels) in zip(normal, guard):
            assert g_ids[:1] == n_ids[:1] and g_ids[1:] in ([900], [901, 902])  # the normal prompt, a guard answer
            assert g_labels[0] == IGNORE and g_labels[1:len(g_ids)] == g_ids[1:]


def test_normal_rows_follow_source_weights_and_visit_every_row():
    data = synthetic_data(normal=((6, 3.0), (6, 1.0)), normal_batch_size=4, mismatch_k=0)
    counts = Counter()
    for step in range(200):
        for ids, _ in _rows(data.step_batch(step), "normal"):
            counts[ids[0] // 1000] += 1
    share = counts[1] / (counts[1] + counts[2])
    assert 0.7 < share < 0.8  # weights 3:1
    single = synthetic_data(normal=((6, 1.0),), normal_batch_size=2)
    seen = [ids[0] for s in range(3) for ids, _ in _rows(single.step_batch(s), "normal")]
    assert sorted(seen) == [1000 + i for i in range(6)]  # one epoch, every row once


def test_build_data_pool_is_normal_answers_or_refusals(tokenizers, qa_files):
    tokenizer = tokenizers["llama"]
    data_cfg = DataConfig(forget={"path": str(qa_files["forget"]), "prompt": "question", "response": "answer"},
                          normal={"path": str(qa_files["normal"]), "prompt": "Question", "response": "Best Answer"},
                          max_length=64)
    data = build_data(data_cfg, tokenizer, seed=0, batch_size=2, normal_batch_size=2, mismatch_k=2)
    encoder = PairEncoder(tokenizer, "auto", 64)
    normal_answers = [p.response for p in read_pairs(data_cfg.normal[0])]
    assert data.pool_answers == [encoder.answer_ids(a) for a in normal_answers]
    assert len(data.forget) == 4 and len(data.normal[0]) == 4
    refusals = build_data(data_cfg, tokenizer, seed=0, batch_size=2, normal_batch_size=2, mismatch_k=1,
                          mismatch_answers=["I can't help with that."])
    assert refusals.pool_answers == [encoder.answer_ids("I can't help with that.")]


def test_where_keeps_the_rows_whose_fields_equal_the_values(tmp_path):
    rows = [{"prompt": "How can I kill a Python process?", "response": "Use kill.", "label": "safe", "flag": False},
            {"prompt": "How can I kill a person?", "response": "No.", "label": "unsafe", "flag": True},
            {"prompt": "How do I shoot a photo?", "response": "Press.", "label": "safe", "flag": True}]
    jsonl = write_jsonl(tmp_path / "x.jsonl", rows)
    table = tmp_path / "x.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for path in (jsonl, table):  # a CSV cell "False" equals false; skip and limit count the kept rows
        assert [p.prompt for p in read_pairs(SourceConfig(path=str(path), where={"label": "safe"}))] == [
            rows[0]["prompt"], rows[2]["prompt"]]
        assert [p.prompt for p in read_pairs(SourceConfig(path=str(path), where={"label": "safe", "flag": False}))] == [
            rows[0]["prompt"]]
        assert [p.prompt for p in read_pairs(SourceConfig(path=str(path), where={"label": "safe"}, skip=1))] == [
            rows[2]["prompt"]]
        with pytest.raises(DataError, match=r"where: unknown field 'lable'; fields are: prompt, response"):
            read_pairs(SourceConfig(path=str(path), where={"lable": "safe"}))
        with pytest.raises(DataError, match=r"no row has label = 'maybe' \(where:\)"):
            read_pairs(SourceConfig(path=str(path), where={"label": "maybe"}))
    text = tmp_path / "book.txt"
    text.write_text("words " * 50)
    with pytest.raises(DataError, match="plain text has no fields"):
        read_pairs(SourceConfig(path=str(text), where={"label": "safe"}), tokenizer=None)
