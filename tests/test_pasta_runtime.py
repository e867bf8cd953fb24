"""The PASTA runtime (runtimes/pasta.py) on compiled random-init models, p = 1 and p = 2:
teacher-forced logits against PyTorch under PASTA's masks in both schedules and with
deferred forks, greedy output against the torch sequential interpreter, budgets, per-thread
sampling streams, the timeline, and the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import declared_atol
from edgeseq.models import pasta_task as T
from edgeseq.models.pasta import batch_layout, generate_sequential, masked_logits
from edgeseq.models.pasta_task import pasta_examples, pasta_examples_per_k
from edgeseq.runtimes import SamplingOptions, load
from edgeseq.runtimes.pasta_lang import Budgets

from edgeseq.cli import cli
from edgeseq.errors import GenerateError
from edgeseq.families.pasta.parity import predecessors

WIDE = Budgets(max_chunk_tokens=64, max_tokens=200)  # nothing in a task document hits these


def worst_forced_difference(runtime, model, examples, **kwargs) -> float:
    prompts, answers = [e.prompt for e in examples], [e.spliced for e in examples]
    results = runtime.generate(prompts, budgets=kwargs.pop("budgets", WIDE), forced=answers, return_logits=True, **kwargs).rows
    ids, positions, _, visible = batch_layout([p + a for p, a in zip(prompts, answers)], [len(p) for p in prompts])
    with torch.no_grad():
        reference = masked_logits(model, ids, positions, visible).numpy()
    worst = 0.0
    for b, r in enumerate(results):
        assert r.tokens == answers[b] and r.outcome == "eos"
        for logits, at in zip(r.logits, predecessors(prompts[b] + answers[b], len(prompts[b]))):
            if at is not None:
                worst = max(worst, float(np.abs(reference[b, at] - logits).max()))
    return worst


@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_teacher_forced_logits_match_pytorch_under_pasta_masks(pasta_compiled, schedule):
    runtime, model = pasta_compiled
    examples = pasta_examples_per_k(2, seed=300)
    assert worst_forced_difference(runtime, model, examples, schedule=schedule) <= declared_atol("pasta")


def test_deferred_forks_change_nothing(pasta_compiled):
    """One chunk at a time while the main thread goes on: later chunks fork from the
    snapshot taken at their promise, not from the main row as it is by then."""
    runtime, model = pasta_compiled
    examples = pasta_examples(3, seed=310, k=4)
    assert worst_forced_difference(runtime, model, examples, budgets=Budgets(1, 64, 200)) <= declared_atol("pasta")


def test_greedy_output_equals_the_torch_interpreter_in_both_schedules(pasta_compiled):
    runtime, model = pasta_compiled
    prompts = [e.prompt for e in pasta_examples(6, seed=320)]
    budgets = Budgets(max_chunk_tokens=6, max_tokens=40)
    reference = [generate_sequential(model, p, budgets) for p in prompts]
    for schedule in ("parallel", "sequential"):
        assert [r.tokens for r in runtime.generate(prompts, budgets=budgets, schedule=schedule).rows] == reference


def test_chunks_are_cut_at_their_budget_and_the_answer_at_max_tokens(pasta_compiled):
    runtime, _ = pasta_compiled
    e = pasta_examples(1, seed=330, k=3)[0]
    budgets = Budgets(max_chunk_tokens=4, max_tokens=30)
    results = [runtime.generate([e.prompt], budgets=budgets, forced=[e.spliced], schedule=s).rows[0]
               for s in ("parallel", "sequential")]
    assert results[0].tokens == results[1].tokens and len(results[0].tokens) <= 30
    chunks = results[0].threads[1:]
    assert chunks and all(c["tokens"] == 4 for c in chunks)  # <async> f0 f1 </async>: closed by the budget
    assert results[0].tokens.count(T.END_ASYNC) == results[0].tokens.count(T.ASYNC)


def test_sampling_draws_per_thread_streams_so_the_schedule_does_not_matter(pasta_compiled):
    runtime, _ = pasta_compiled
    prompts = [e.prompt for e in pasta_examples(4, seed=340)]
    sampling = SamplingOptions(do_sample=True, temperature=1.5, seed=7)
    budgets = Budgets(max_chunk_tokens=8, max_tokens=48)
    runs = [[r.tokens for r in runtime.generate(prompts, budgets=budgets, sampling=sampling, schedule=s).rows]
            for s in ("parallel", "sequential", "parallel")]
    assert runs[0] == runs[1] == runs[2]
    other = [r.tokens for r in runtime.generate(prompts, budgets=budgets, sampling=SamplingOptions(True, 1.5, seed=8)).rows]
    assert other != runs[0]


def test_the_timeline_shows_forks_waits_and_finishes(pasta_compiled):
    runtime, _ = pasta_compiled
    e = pasta_examples(1, seed=350, k=3)[0]
    result = runtime.generate([e.prompt], budgets=WIDE, forced=[e.spliced]).rows[0]
    main, *chunks = result.threads
    assert len(chunks) == 3 and main["waits"] and main["waits"][0][1] >= max(c["finished_step"] for c in chunks)
    assert [c["promised"] for c in chunks] == e.promised
    assert all(c["promised_step"] <= c["forked_step"] < c["finished_step"] for c in chunks)
    assert result.longest_path < len(result.tokens) and result.theoretical_speedup > 1


def test_cli_generate_json_and_schedules(artifacts):
    _, artifact = artifacts.get(family="pasta", n_stacks=1)
    prompt = " ".join(map(str, pasta_examples(1, seed=360, k=2)[0].prompt))
    outs = {}
    for schedule in ("parallel", "sequential"):
        result = CliRunner().invoke(cli, ["generate", str(artifact), "--input-ids", prompt, "--schedule", schedule,
                                          "--max-new-tokens", "40", "--json"])
        assert result.exit_code == 0, result.output
        outs[schedule] = json.loads(result.output)
    assert outs["parallel"]["tokens"] == outs["sequential"]["tokens"]
    row = outs["parallel"]["results"][0]
    assert row["threads"][0]["thread"] == "main" and row["outcome"]
    text = CliRunner().invoke(cli, ["generate", str(artifact), "--input-ids", prompt, "--max-new-tokens", "40"])
    assert text.exit_code == 0 and "main" in text.output and "outcome" in text.output
    wrong = CliRunner().invoke(cli, ["generate", str(artifact), "--input-ids", prompt, "--schedule", "recurrent"])
    assert wrong.exit_code != 0 and "PASTA schedule" in wrong.output


def test_cli_inspect_shows_the_tags_and_bench_reports_both_schedules(artifacts):
    _, artifact = artifacts.get(family="pasta", n_stacks=1)
    info = CliRunner().invoke(cli, ["inspect", str(artifact), "--json"])
    assert json.loads(info.output)["pasta"]["tags"]["promise"] == T.PROMISE
    assert "PASTA tags: promise=5" in CliRunner().invoke(cli, ["inspect", str(artifact)]).output
    bench = CliRunner().invoke(cli, ["bench", str(artifact), "--rounds", "1", "--json"])
    assert bench.exit_code == 0, bench.output
    report = json.loads(bench.output)["pasta"]
    assert report["wall_speedup"] > 0 and report["theoretical_speedup"] >= 1 and report["identical_outputs"]


@pytest.mark.parametrize("budgets,message", [
    (Budgets(0, 12, 96), "max_live_threads=0 must be at least 1"),
    (Budgets(4, 1, 96), "max_chunk_tokens=1 must be at least 2"),
    (Budgets(4, 12, 0), "max_tokens=0 must be at least 1"),
])
def test_bad_budgets_are_refused(pasta_compiled, budgets, message):
    runtime, _ = pasta_compiled
    with pytest.raises(GenerateError, match=message):
        runtime.generate([[40, 41, T.BOS]], budgets=budgets)


def test_bad_requests_are_refused_with_the_fix(pasta_compiled):
    runtime, _ = pasta_compiled
    limit = runtime.config["max_positions"]
    with pytest.raises(GenerateError, match=f"the model's positions end at {limit}"):
        runtime.generate([[40] * limit])
    with pytest.raises(GenerateError, match="2 forced answers for 1 prompts"):
        runtime.generate([[40, T.BOS]], forced=[[T.EOS], [T.EOS]])
    with pytest.raises(GenerateError, match="unknown PASTA schedule 'concurrent'"):
        runtime.generate([[40, T.BOS]], schedule="concurrent")
    with pytest.raises(GenerateError, match="beam search does not apply to a PASTA artifact") as caught:
        runtime.generate([[40, T.BOS]], num_beams=4)
    assert "use n for several answers" in caught.value.fix
    with pytest.raises(GenerateError, match="option 'repetition_penalty' is not one this artifact's decoding"):
        runtime.generate([[40, T.BOS]], repetition_penalty=1.2)


def test_what_a_pasta_artifact_cannot_do_is_refused(artifacts, tmp_path):
    from edgeseq.errors import BuildError, LoadError
    from edgeseq.families.pasta.bench import pasta_bench

    _, artifact = artifacts.get(family="pasta", n_stacks=1)
    with pytest.raises(LoadError, match="unknown PASTA schedule 'recurrent'"):
        load(artifact, schedule="recurrent")
    with load(artifact) as model:  # options only PASTA takes, and what it cannot take, are named
        with pytest.raises(GenerateError, match="stop_tokens does not apply"):
            model.generate([[40, T.BOS]], stop_tokens=[3])
        with pytest.raises(GenerateError, match="option 'beams' is not one"):
            model.generate([[40, T.BOS]], beams=2)
    edited = tmp_path / "edited"
    shutil.copytree(artifact, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["pasta"]["bench_prompts"] = []
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match="has no bench prompts"):
        pasta_bench(edited, rounds=1)


def test_a_checkpoint_off_the_task_vocabulary_is_refused_at_compile(tmp_path):
    from edgeseq.models.checkpoint import init_checkpoint

    from edgeseq.errors import BuildError
    from edgeseq.pipeline import compile_checkpoint

    checkpoint = init_checkpoint("pasta", tmp_path / "ckpt", sets=["vocab_size=64", "d_model=32", "n_layers=2"])
    with pytest.raises(BuildError, match="vocab_size=64, not the PASTA task's 148"):
        compile_checkpoint(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
