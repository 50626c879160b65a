"""Packs: K GPTs trained in one process equal K separate runs, and each member is an ordinary run."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from codemix.checkpoint import checkpoint_info, latest_checkpoint, read_weights
from codemix.config import validate_study
from codemix.evals.handle import load_handle
from codemix.models.gpt import GPT, GPTConfig
from codemix.study.commands import build_data
from codemix.train.pack import PackedGPT, PackMember, clip_per_member, member_threads, train_pack
from codemix.train.pretrain import train

#: Three mixtures (m = 0, 0.25, 0.5) of English and Python; dropout on, so each member's own random
#: stream matters; 12 steps with a checkpoint every 4 (for the kill test).
STUDY = {
    "name": "pack",
    "data": {"seq_len": 64, "heldout_docs": 2, "workers": 1,
             "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 40_000},
             "sources": [{"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"], "max_docs": 60},
                         {"name": "python", "lang": "python", "code": True, "paths": ["code/code_python.jsonl.gz"],
                          "max_docs": 30}]},
    "mixtures": {"settings": ["competitive"], "m": [0.0, 0.25, 0.5], "baselines": False, "n_tokens": 12_800},
    "model": {"arch": "gpt", "preset": "tiny", "dropout": 0.1},
    "pretrain": {"batch_size": 4, "lr": 3.0e-3, "warmup_steps": 2, "max_steps": 12, "eval_every": 6,
                 "eval_batches": 1, "log_every": 1, "checkpoint_every": 4, "keep_checkpoints": 3, "device": "cpu"},
    "seeds": [0, 1],
}
MEMBERS = [(0.0, 0), (0.25, 1), (0.5, 0)]  # different mixtures and seeds


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir):
    cfg = validate_study({**STUDY, "out": str(tmp_path_factory.mktemp("pack") / "study")})
    return cfg, build_data(cfg)


def _members(data, root: Path) -> list[PackMember]:
    return [PackMember(data.mixture_dir("competitive", m), seed, root / f"m{m}-s{seed}", {"labels": [{"m": m}]})
            for m, seed in MEMBERS]


def _log(run: Path, kind: str | None = None) -> list[dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("kind") == kind]


@pytest.fixture(scope="module")
def runs(study, tmp_path_factory):
    """The same three runs, one by one and as one pack."""
    cfg, data = study
    root = tmp_path_factory.mktemp("runs")
    heldout = {s.name: data.heldout_dir(s.name) for s in cfg.data.sources}
    single = _members(data, root / "single")
    for m in single:
        train(cfg, mixture_dir=m.mixture_dir, heldout=heldout, tokenizer_path=data.tokenizer_path, seed=m.seed,
              out_dir=m.out_dir, record=m.record)
    packed = _members(data, root / "pack")
    with _torch_threads(2):  # as a study gives a pack 2 cores: its 3 members train in 2 groups, in threads
        finals = train_pack(cfg, packed, heldout=heldout, tokenizer_path=data.tokenizer_path)
    return single, packed, finals, heldout


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_a_pack_equals_separate_runs_step_by_step(runs):
    """Losses of every step, held-out losses and final weights agree to float32 rounding (dropout on)."""
    single, packed, finals, _ = runs
    for s, p, final in zip(single, packed, finals):
        a, b = _log(s.out_dir), _log(p.out_dir)
        assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
        for x, y in zip(a, b):
            assert y["loss"] == pytest.approx(x["loss"], abs=2e-5)
            assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
            assert (y["tokens"], y["lr"]) == (x["tokens"], x["lr"])
        ea, eb = _log(s.out_dir, "eval"), _log(p.out_dir, "eval")
        assert [(r["step"], r["source"]) for r in ea] == [(r["step"], r["source"]) for r in eb] and ea
        assert all(y["loss"] == pytest.approx(x["loss"], abs=2e-5) for x, y in zip(ea, eb))
        wa, wb = read_weights(latest_checkpoint(s.out_dir)), read_weights(final)
        assert wa.keys() == wb.keys()
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    # the members really differ (their own mixtures, seeds and dropout masks)
    last = [_log(p.out_dir)[-1]["loss"] for p in packed]
    assert len({round(x, 4) for x in last}) == 3


def test_a_member_checkpoint_is_an_ordinary_checkpoint(runs, tmp_path):
    """Same files, same trainer state (its loader position and random streams), loads and evaluates the same."""
    single, packed, finals, _ = runs
    s_ckpt, p_ckpt = latest_checkpoint(single[1].out_dir), finals[1]
    assert sorted(x.name for x in s_ckpt.iterdir()) == sorted(x.name for x in p_ckpt.iterdir())
    ts, tp = (json.loads((c / "trainer_state.json").read_text()) for c in (s_ckpt, p_ckpt))
    assert {k: ts[k] for k in ("step", "tokens", "total_steps", "loader", "world_size")} == \
           {k: tp[k] for k in ("step", "tokens", "total_steps", "loader", "world_size")}
    assert ts["rng"]["numpy"] == tp["rng"]["numpy"] and ts["rng"]["python"] == tp["rng"]["python"]
    opt_s, opt_p = (torch.load(c / "optimizer.pt", weights_only=True) for c in (s_ckpt, p_ckpt))
    assert opt_s["param_groups"] == opt_p["param_groups"] and opt_s["state"].keys() == opt_p["state"].keys()
    for i in opt_s["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(opt_s["state"][i][name], opt_p["state"][i][name], atol=1e-6)
    assert checkpoint_info(p_ckpt).labels == checkpoint_info(s_ckpt).labels
    a, b = load_handle(s_ckpt, device="cpu"), load_handle(p_ckpt, device="cpu")
    text = "def add(a, b):\n    return a + b\n"
    assert b.score(["def"], [text[3:]])[0] == pytest.approx(a.score(["def"], [text[3:]])[0], abs=1e-3)


def test_a_killed_pack_resumes_every_member(study, runs, tmp_path):
    """Kill after step 8 (the checkpoint of step 8 on disk), rerun: the same loss curves as uninterrupted.

    The rerun trains on one thread (one group), the uninterrupted pack trained in two groups.
    """
    cfg, data = study
    _, packed, _, heldout = runs
    killed = _members(data, tmp_path)
    for done, m in zip(packed, killed):  # what a kill after the step-8 checkpoint leaves
        shutil.copytree(done.out_dir, m.out_dir)
        shutil.rmtree(m.out_dir / "checkpoints" / "step-0000012")
        lines = (m.out_dir / "log.jsonl").read_text().splitlines()
        (m.out_dir / "log.jsonl").write_text("\n".join(lines[:10]) + "\n")  # and a log cut at step 9
    train_pack(cfg, killed, heldout=heldout, tokenizer_path=data.tokenizer_path)
    for done, m in zip(packed, killed):
        assert [r["loss"] for r in _log(m.out_dir)] == pytest.approx([r["loss"] for r in _log(done.out_dir)],
                                                                      abs=1e-6)
        wa, wb = read_weights(latest_checkpoint(done.out_dir)), read_weights(latest_checkpoint(m.out_dir))
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_per_member_clipping_equals_clip_grad_norm_of_each_model():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=40, d_model=16, n_heads=2, d_ff=24, n_layers=1)
    models = [GPT(cfg) for _ in range(3)]
    pack = PackedGPT(models, [{"cpu": torch.get_rng_state()}] * 3)
    for p in pack.parameters():
        p.grad = torch.randn_like(p) * torch.tensor([0.01, 1.0, 100.0]).view(3, *([1] * (p.dim() - 1)))
    expected = []
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            p.grad = pack.w(name).grad[k].clone()
        expected.append(torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0))
        clipped = {n: p.grad.clone() for n, p in model.named_parameters()}
        models[k]._clipped = clipped
    norms = clip_per_member(list(pack.parameters()), 1.0)
    assert torch.allclose(norms, torch.stack(expected), rtol=1e-5)
    for k, model in enumerate(models):
        for name, g in model._clipped.items():
            assert torch.allclose(pack.w(name).grad[k], g, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_member_groups_in_threads_compute_what_one_thread_computes(dropout):
    """5 members in groups of 2 and 3, each in its own thread: the same losses, gradients and random streams."""
    cfg = GPTConfig(vocab_size=64, d_model=32, n_heads=2, d_ff=48, n_layers=2, dropout=dropout, tie_embeddings=True)
    models = []
    for m in range(5):
        torch.manual_seed(m)
        models.append(GPT(cfg))
    one = PackedGPT(models, [{"cpu": torch.Generator().manual_seed(m).get_state()} for m in range(5)])
    grouped = copy.deepcopy(one)
    x = torch.randint(0, 64, (5, 3, 17), generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([0.3, 1.7, 2.0, 0.5, 1.0])  # a second step, accumulated: each member's loss weighted

    def two_steps(pack: PackedGPT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = pack(x[..., :-1], x[..., 1:])
        losses.sum().backward()
        first = {name: p.grad.clone() for name, p in pack.named_parameters()}
        (pack(x[..., :-1], x[..., 1:]) * weights).sum().backward()
        return losses, first

    losses, first = two_steps(one)
    with _torch_threads(2):
        with member_threads(grouped):
            assert grouped.workers == 2 and grouped.map_groups(lambda members: torch.get_num_threads()) == [1, 1]
            assert [list(r) for r in grouped.member_groups()] == [[0, 1], [2, 3, 4]]
            grouped_losses, grouped_first = two_steps(grouped)
            with torch.no_grad():  # evaluation: groups in threads too, no graph
                evaluated = grouped.eval()(x[..., :-1], x[..., 1:])
                assert torch.equal(evaluated, one.eval()(x[..., :-1], x[..., 1:])) and not evaluated.requires_grad
        assert grouped.workers == 1 and torch.get_num_threads() == 2  # restored
        with member_threads(grouped, compiled=True):  # a compiled pack keeps torch's threads
            assert grouped.workers == 1 and torch.get_num_threads() == 2
    assert torch.equal(grouped_losses, losses)
    for (name, a), b in zip(one.named_parameters(), grouped.parameters()):
        assert torch.equal(first[name], grouped_first[name]), name  # the sum of the losses: to the bit
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")  # weighted
    assert all(torch.equal(a["cpu"], b["cpu"]) for a, b in zip(one.rng_states, grouped.rng_states))
