"""The `t5` task: CodeT5 objectives on a real mixture, training, `codemix train` and `codemix export`."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from codemix.config import validate_study
from codemix.errors import ConfigError
from codemix.objectives import TASKS
from codemix.objectives.codet5 import BIMODAL, MASKED_IDENTIFIER, OBJECTIVES, SPAN, TAGGING, CodeT5Task, collate

from .conftest import SEQ_LEN, mixture_batches, t5_study_raw


def _task(t5_study, **objectives) -> CodeT5Task:
    cfg, data = t5_study
    if objectives:
        cfg = cfg.model_copy(deep=True)
        for name, value in objectives.items():
            setattr(cfg.pretrain.objectives, name, value)
    np.random.seed(0)
    return TASKS["t5"](cfg, tokenizer_path=data.tokenizer_path)


def test_code_rows_draw_code_objectives_and_text_rows_get_span_corruption(t5_study):
    cfg, data = t5_study
    task = _task(t5_study, bimodal=1.0)
    is_code = {i: s.code for i, s in enumerate(cfg.data.sources)}
    seen = {name: 0 for name in OBJECTIVES}
    batches = mixture_batches(data, cfg, batch_size=16)
    for step in range(12):
        batch = next(batches)
        examples = task.examples(batch, step)
        for source, example in zip(batch["source"].tolist(), examples):
            seen[OBJECTIVES[example.objective]] += 1
            assert example.inputs[-1] == task.vocab.eos  # every encoder input ends like T5's
            if not is_code[source]:
                assert example.objective == SPAN
            if example.objective == TAGGING:
                assert len(example.inputs) <= SEQ_LEN and example.tags is not None and example.targets is None
                assert 0 < example.tags.mean() < 1
            else:
                assert example.targets is not None and len(example.targets) <= cfg.pretrain.objectives.target_len
    assert all(seen.values()), seen
    # deterministic: the same batch and step give the same examples
    batch = next(batches)
    a, b = task.examples(batch, 3), task.examples(batch, 3)
    assert all(np.array_equal(x.inputs, y.inputs) for x, y in zip(a, b))


def test_bound_streams_give_code_rows_their_precomputed_annotations(t5_study, monkeypatch):
    """With the data stage's annotations bound, a training step never runs tree-sitter."""
    from codemix.data.annotations import StreamAnnotations
    from codemix.data.loader import MixtureLoader
    from codemix.objectives import codet5

    def no_parsing(*args, **kwargs):
        raise AssertionError("a training row was parsed despite its stream's annotations")

    monkeypatch.setattr(codet5, "token_identifiers", no_parsing)
    monkeypatch.setattr(codet5, "token_doc_pairs", no_parsing)
    cfg, data = t5_study
    task = _task(t5_study, bimodal=1.0)
    loader = MixtureLoader(data.mixture_dir("competitive", 0.5), batch_size=16, seed=0, with_sources=True)
    task.bind_streams([stream.dir for stream in loader.streams])
    seen = set()
    for step, batch in zip(range(40), loader):
        rows = zip(batch["source"].tolist(), batch["offset"].tolist(), batch["tokens"], task.examples(batch, step))
        for source, lo, tokens, example in rows:
            seen.add(example.objective)
            if example.objective == TAGGING:
                window = StreamAnnotations(loader.streams[source].dir).identifiers(lo, lo + SEQ_LEN)
                width = len(example.tags)  # the start of the row that fits span corruption's input length
                assert width == len(example.inputs) - 1 < SEQ_LEN
                assert np.array_equal(example.tags, window.tagged[:width].astype(np.int64))
                assert np.array_equal(example.inputs[:-1], tokens.numpy()[:width])
    assert seen == {SPAN, TAGGING, MASKED_IDENTIFIER, BIMODAL}


def test_first_phase_batches_need_no_padding(t5_study):
    cfg, data = t5_study
    task = _task(t5_study)
    batch = next(mixture_batches(data, cfg, batch_size=8))
    text_rows = {"tokens": batch["tokens"], "source": torch.zeros(8, dtype=torch.long)}  # all "c4"
    tensors = collate(task.examples(text_rows, 0), pad_id=task.vocab.pad)
    assert bool(tensors["attention_mask"].all())  # span corruption of fixed-length rows: no padding
    assert bool((tensors["labels"] >= 0).all()) and bool((tensors["tags"] == -100).all())

    # CodeT5's first phase on code and text: span, tagging and MIP inputs share one length
    sentinels = set(task.vocab.sentinels)
    batches = mixture_batches(data, cfg, batch_size=16)
    objectives = set()
    for step in range(6):
        examples = task.examples(next(batches), step)
        objectives |= {e.objective for e in examples}
        assert bool(collate(examples, pad_id=task.vocab.pad)["attention_mask"].all())
        for e in (e for e in examples if e.objective == MASKED_IDENTIFIER):  # cut inputs keep their names
            predicted = [t for t in e.targets.tolist() if t in sentinels]
            assert predicted and set(predicted) <= set(e.inputs.tolist())
    assert objectives == {SPAN, TAGGING, MASKED_IDENTIFIER}


def _probe(task: CodeT5Task, batches, rows_per_objective: int = 6) -> list:
    """Fixed examples of every objective, drawn from training sequences."""
    chosen: dict[int, list] = {i: [] for i in range(len(OBJECTIVES))}
    weights = task.weights
    try:
        for batch in batches:
            for objective in range(len(OBJECTIVES)):
                task.weights = [float(i == objective) for i in range(len(OBJECTIVES))]
                for example in task.examples(batch, step=10_000 + objective):
                    if example.objective == objective and len(chosen[objective]) < rows_per_objective:
                        chosen[objective].append(example)
            if all(len(v) == rows_per_objective for v in chosen.values()):
                break
    finally:
        task.weights = weights
    return [e for v in chosen.values() for e in v]


@torch.no_grad()
def _probe_losses(task: CodeT5Task, model, probe) -> dict[str, float]:
    model.eval()
    out = model(**collate(probe, pad_id=task.vocab.pad), n_objectives=len(OBJECTIVES))
    model.train()
    losses = {name: float(out["seq2seq"][i]) for i, name in enumerate(OBJECTIVES)}
    losses["identifier_tagging"] = float(out["tagging"])
    return losses


def test_tiny_t5_trained_on_a_real_mixture_lowers_every_objective_loss(t5_study):
    cfg, data = t5_study
    task = _task(t5_study, bimodal=1.0)
    torch.manual_seed(0)
    model = task.build_model()
    probe = _probe(task, mixture_batches(data, cfg, batch_size=16, seed=1))
    assert {e.objective for e in probe} == {SPAN, TAGGING, MASKED_IDENTIFIER, BIMODAL}
    before = _probe_losses(task, model, probe)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = mixture_batches(data, cfg, batch_size=8, seed=0)
    logged = []
    for step in range(70):
        out = task.loss(model, next(batches), step)
        assert set(out) == {"loss", *OBJECTIVES}
        assert math.isfinite(out["loss"].item())
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logged.append({k: v.item() for k, v in out.items()})
    after = _probe_losses(task, model, probe)
    print(json.dumps({"before": before, "after": after}))
    for name in OBJECTIVES:  # nats of cross-entropy; tagging is a binary cross-entropy (0.69 at chance)
        margin = 0.1 if name == "identifier_tagging" else 0.5
        assert after[name] < before[name] - margin, (name, before[name], after[name])
    assert np.mean([r["loss"] for r in logged[-10:]]) < 0.8 * np.mean([r["loss"] for r in logged[:5]])


def test_every_parameter_gets_a_gradient_whatever_the_objectives_of_a_batch(t5_study):
    # DDP needs every parameter in each forward's graph, even in a batch with no tagging rows
    cfg, data = t5_study
    task = _task(t5_study)
    model = task.build_model()
    batch = next(mixture_batches(data, cfg, batch_size=4))
    text_only = {"tokens": batch["tokens"], "source": torch.zeros(4, dtype=torch.long)}
    task.loss(model, text_only, 0)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_heldout_batches_without_sources_get_the_same_span_corruption_each_time(t5_study):
    cfg, data = t5_study
    task = _task(t5_study)
    model = task.build_model().eval()
    tokens = next(mixture_batches(data, cfg, batch_size=4))["tokens"]
    with torch.no_grad():
        first, second = task.loss(model, tokens, 10), task.loss(model, tokens, 20)
    assert first["loss"].item() == second["loss"].item() == first["span_corruption"].item()
    assert math.isnan(first["identifier_tagging"].item())


def test_target_len_too_short_for_span_corruption_is_a_config_error(t5_study):
    cfg, data = t5_study
    raw = t5_study_raw(cfg.out)
    raw["pretrain"]["objectives"] = {"target_len": 20}
    with pytest.raises(ConfigError, match="target_len=20 is shorter than the span corruption targets"):
        CodeT5Task(validate_study(raw), tokenizer_path=data.tokenizer_path)
    raw["pretrain"]["objectives"] = {"span_corruption": 0, "identifier_tagging": 0, "masked_identifier": 0}
    with pytest.raises(ConfigError, match="every weight is 0"):
        CodeT5Task(validate_study(raw), tokenizer_path=data.tokenizer_path)


def test_codemix_train_and_export_for_arch_t5(t5_study, tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM

    from codemix.checkpoint import latest_checkpoint
    from codemix.cli import main
    from codemix.config import save_config
    from codemix.models.t5 import CodeT5
    from codemix.study.graph import find_pretrain
    from codemix.train.pretrain import load_checkpoint, train

    cfg, data = t5_study
    study = save_config(cfg, tmp_path, "study.yaml")
    assert main(["train", str(study), "--setting", "competitive", "--m", "0.5"]) == 0
    job_dir = data.plan.job_dir(find_pretrain(data.plan, setting="competitive", m=0.5, seed=0))
    ckpt = latest_checkpoint(job_dir)
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(ckpt)
    job_log = (job_dir / "job.log").read_text()  # the job's own output
    assert "codemix train" in job_log
    for output in (captured.err, job_log):  # the data stage annotated the code
        assert "parsed with tree-sitter at every step" not in output
    log = [json.loads(line) for line in (job_dir / "log.jsonl").read_text().splitlines()]
    train_lines = [r for r in log if "kind" not in r]
    assert [r["step"] for r in train_lines] == list(range(1, 7))
    assert all(set(OBJECTIVES) <= set(r) for r in train_lines)
    # code rows get code objectives (a step without any logs null)
    code_objectives = [r[k] for r in train_lines for k in ("identifier_tagging", "masked_identifier")]
    assert any(v is not None and math.isfinite(v) for v in code_objectives)
    assert {r["source"] for r in log if r.get("kind") == "eval"} == {"c4", "python", "rust", "go"}
    saved = json.loads((ckpt / "config.json").read_text())["codemix"]
    assert saved["arch"] == "t5" and saved["model"]["d_model"] == 64

    # CodeT5's second phase: the same run continues with bimodal dual generation on (the objectives
    # are not part of the checkpointed model); a copy, as the study's finished job is never changed
    run = tmp_path / "run"
    shutil.copytree(job_dir, run)
    phase2 = cfg.model_copy(deep=True)
    phase2.pretrain.objectives.bimodal = 1.0
    phase2.pretrain.max_steps = 8
    ckpt = train(phase2, mixture_dir=data.mixture_dir("competitive", 0.5),
                 heldout={s.name: data.heldout_dir(s.name) for s in cfg.data.sources},
                 tokenizer_path=data.tokenizer_path, seed=0, out_dir=run, resume=True)
    assert ckpt == latest_checkpoint(run) and ckpt.name == "step-0000008"
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "kind" not in r] == list(range(1, 9))
    assert [r for r in lines if "kind" not in r][:6] == train_lines  # continued, not restarted
    assert any(r["bimodal"] is not None for r in lines[len(log):] if "kind" not in r)

    out = tmp_path / "hf"
    assert main(["export", str(run), str(out)]) == 0
    hf = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    ours = CodeT5(saved["model"])
    load_checkpoint(ckpt, ours)
    ids = torch.randint(200, 2000, (2, 20))
    decoder = torch.full((2, 1), saved["model"]["decoder_start_token_id"])
    with torch.no_grad():
        expected = ours.t5(input_ids=ids, decoder_input_ids=decoder).logits
        got = hf(input_ids=ids, decoder_input_ids=decoder).logits
    torch.testing.assert_close(got, expected)
    generated = hf.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[0] == 2 and generated.shape[1] <= 6
