"""Generation jobs end to end: a tiny random-init DDPM (8×8, 4 DDIM steps) on a real local Ray."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file

from models import Registry, default_registry
from models.base import GenerativeModel
from models.diffusion import DDPMConfig, build_unet, ddim_sample, sample_generator, unet_eps
from models.registry import ModelEntry
from models.schedule import NoiseSchedule
from models.weights import WeightsSpec, fetch, file_sha256, load_state_dict
from pipeline import api, cli, manifest, runs
from pipeline.job import GENERATION_TASK, JobError, load_job, parse_job

TINY = DDPMConfig(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    schedule=NoiseSchedule(num_train_timesteps=100),
)
SEED = 7
POISONED = 5  # tiny-ddpm-flaky fails on this sample index of seed SEED


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[str, str]:
    """A seeded random-init UNet for TINY, saved as safetensors: (path, sha256)."""
    torch.manual_seed(0)
    unet = build_unet(TINY)
    path = tmp_path_factory.mktemp("tiny") / "tiny-ddpm.safetensors"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    return str(path), file_sha256(path)


def tiny_registry(weights: tuple[str, str]) -> Registry:
    """The default registry plus three tiny DDIM generators over the same weights:
    ``tiny-ddpm``; ``tiny-ddpm-flaky``, which raises on the batch holding sample POISONED of
    seed SEED (as a model failing on one input would); ``tiny-ddpm-unknown``, whose number of
    classes the registry does not declare. Defined in here so Ray ships it all by value."""
    uri, sha = weights
    cfg = TINY

    class TinyParams(BaseModel):
        model_config = ConfigDict(extra="forbid")
        steps: int = Field(4, ge=1, le=100)
        eta: float = Field(0.0, ge=0)

    def build(p: TinyParams, fail_on: int | None = None) -> GenerativeModel:
        unet = build_unet(cfg)
        unet.load_state_dict(load_state_dict(fetch(uri, sha)))
        eps = unet_eps(unet.eval(), micro_batch=1)
        acp = cfg.schedule.alphas_cumprod()

        def sample(generators, labels, device):
            if fail_on is not None and any(g.initial_seed() == fail_on for g in generators):
                raise RuntimeError("poisoned sample")
            return ddim_sample(eps, (len(generators), 3, 8, 8), acp, generators, p.steps, p.eta, device=device)

        return GenerativeModel("tiny-ddpm", unet, sample, (3, 8, 8), "ddim", p.steps, sha)

    spec = WeightsSpec(uri=uri, sha256=sha, format="safetensors", scale=1, licence="MIT (test weights)")
    poisoned = sample_generator(SEED, POISONED).initial_seed()
    reg = default_registry()
    for name, builder, classes in (
        ("tiny-ddpm", build, 0),
        ("tiny-ddpm-flaky", lambda p: build(p, fail_on=poisoned), 0),
        ("tiny-ddpm-unknown", build, None),
    ):
        reg.register(
            ModelEntry(
                name,
                GENERATION_TASK,
                "tiny random-init DDPM (tests)",
                TinyParams,
                builder,
                weights=spec,
                num_classes=classes,
            )
        )
    return reg


@pytest.fixture(scope="module")
def registry(tiny_weights) -> Registry:
    return tiny_registry(tiny_weights)


def gen_job(
    registry,
    output: Path,
    samples=10,
    start=0,
    shard_size=4,
    batch_size=3,
    model="tiny-ddpm",
    mode="incremental",
    **generate,
):
    data = {
        "name": "gen",
        "mode": mode,
        "output": {"uri": str(output)},
        "generate": {
            "model": model,
            "params": {"steps": 4},
            "samples": samples,
            "start": start,
            "seed": SEED,
            **generate,
        },
        "resources": {"actors": 1, "batch_size": batch_size, "shard_size": shard_size},
    }
    return parse_job(data, registry)


def sample_bytes(output: Path) -> dict[int, bytes]:
    return {int(p.stem): p.read_bytes() for p in sorted((output / "images").glob("*.png"))}


def rows_of(output: Path):
    con = duckdb.connect()
    con.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet('{output}/manifest/**/*.parquet')")
    return con


def test_same_bytes_whatever_the_sharding_and_batching(ray_local, registry, tiny_weights, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert api.run(gen_job(registry, a, shard_size=4, batch_size=3), registry).counts == {"ok": 10}
    assert api.run(gen_job(registry, b, shard_size=10, batch_size=10), registry).counts == {"ok": 10}
    assert api.run(gen_job(registry, c, start=5, samples=5, shard_size=2, batch_size=1), registry).counts == {"ok": 5}
    made_a, made_b, made_c = sample_bytes(a), sample_bytes(b), sample_bytes(c)
    assert sorted(made_a) == list(range(10)) and sorted(made_c) == list(range(5, 10))
    assert made_a == made_b
    assert all(made_c[i] == made_a[i] for i in made_c)
    assert len(set(made_a.values())) == 10  # every index has its own noise
    pixels = np.asarray(Image.open(io.BytesIO(made_a[0])))
    assert pixels.shape == (8, 8, 3) and pixels.std() > 0

    con = rows_of(a)
    assert con.execute("SELECT count(*), count(DISTINCT sample_index), count(DISTINCT shard) FROM m").fetchone() == (
        10,
        10,
        3,
    )
    rows = con.execute(
        "SELECT sample_index, input_uri, output_uri, seed, sampler, sampler_steps, class_label, models, weights_sha256,"
        " status, width_out, height_out, format_out, input_size, width_in, t_model > 0 FROM m ORDER BY sample_index"
    ).fetchall()
    _, sha = tiny_weights
    for i, row in enumerate(rows):
        assert row == (
            i, f"generate://tiny-ddpm/{SEED}/{i}", f"{a}/images/{i:08d}.png", SEED, "ddim", 4, None,
            ["tiny-ddpm"], [sha], "ok", 8, 8, "png", None, None, True,
        )  # fmt: skip
    [record] = runs.load_all(str(a))
    assert record.input_uri == f"generate://tiny-ddpm/{SEED}/0-9" and record.status == "committed"


def test_a_failing_sample_is_an_error_row(ray_local, registry, tmp_path):
    clean, flaky = tmp_path / "clean", tmp_path / "flaky"
    api.run(gen_job(registry, clean, samples=8), registry)
    summary = api.run(gen_job(registry, flaky, samples=8, model="tiny-ddpm-flaky"), registry)
    assert summary.counts == {"ok": 7, "error": 1}
    assert summary.errors == [
        {
            "error_type": "model_error",
            "stage": "model",
            "count": 1,
            "example": f"generate://tiny-ddpm-flaky/{SEED}/{POISONED}",
        }
    ]
    [bad] = (
        rows_of(flaky)
        .execute("SELECT sample_index, output_uri, error_message FROM m WHERE status = 'error'")
        .fetchall()
    )
    assert bad[:2] == (POISONED, None) and "poisoned sample" in bad[2]
    # Its batch neighbours were retried one by one: same bytes as in the clean run.
    made, reference = sample_bytes(flaky), sample_bytes(clean)
    assert sorted(made) == [i for i in range(8) if i != POISONED]
    assert all(made[i] == reference[i] for i in made)
    # retry-errors plans exactly the failed sample.
    retry = api.plan(gen_job(registry, flaky, samples=8, model="tiny-ddpm-flaky", mode="retry-errors"), registry)
    assert retry.categories == {"unchanged": 7, "failed": 1} and retry.inputs == 1


def test_resume_after_a_crash_then_extend_the_range(ray_local, registry, tmp_path):
    out = tmp_path / "out"
    job = gen_job(registry, out, samples=12, shard_size=4, batch_size=4)
    first = api.run(job, registry)
    # Simulate a crash after shard 0 committed: shards 1 and 2 lose their parts and images.
    [record] = runs.load_all(str(out))
    parts = out / "manifest" / record.run_id
    for shard in (1, 2):
        (parts / f"part-{shard:05d}.parquet").unlink()
        for i in range(4 * shard, 4 * shard + 4):
            (out / "images" / f"{i:08d}.png").unlink()
    kept = {
        p: p.stat().st_mtime_ns
        for p in [parts / "part-00000.parquet", *(out / "images" / f"{i:08d}.png" for i in range(4))]
    }
    record.status = "running"
    runs.save(record)

    second = api.run(job, registry)
    assert second.resumed and second.run_id == first.run_id and second.shards_run == 2
    assert second.counts == {"ok": 12}
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())  # committed samples not regenerated
    assert sorted(sample_bytes(out)) == list(range(12))
    con = rows_of(out)
    assert con.execute("SELECT count(*), count(DISTINCT sample_index) FROM m").fetchone() == (12, 12)

    # More samples later: the committed ones are unchanged, only the new indices run.
    more = gen_job(registry, out, samples=16, shard_size=4, batch_size=4)
    plan = api.plan(more, registry)
    assert plan.categories == {"unchanged": 12, "new": 4} and plan.inputs == 4 and plan.shards == 1
    third = api.run(more, registry)
    assert not third.resumed and third.inputs == 4 and third.counts == {"ok": 4}
    con = rows_of(out)
    assert con.execute("SELECT count(*), count(DISTINCT sample_index) FROM m").fetchone() == (16, 16)
    ran = con.execute(
        f"SELECT list(sample_index ORDER BY sample_index) FROM m WHERE run_id = '{third.run_id}'"
    ).fetchone()[0]
    assert ran == [12, 13, 14, 15]
    # Another seed is another set of samples: nothing is unchanged.
    assert api.plan(gen_job(registry, out, samples=16, seed=SEED + 1), registry).categories == {"new": 16}


def test_class_label_unknown_to_the_registry_is_checked_when_the_model_loads(ray_local, registry, tmp_path):
    job = gen_job(registry, tmp_path / "out", samples=2, model="tiny-ddpm-unknown", class_label=3)
    with pytest.raises(Exception, match="is unconditional: generate.class_label must not be set"):
        api.run(job, registry)
    assert manifest.read(str(tmp_path / "out")).num_rows == 0


def test_class_conditional_model_gets_the_label(ray_local, tmp_path):
    """darkroom-vae-digits (shipped, class-conditional): the label reaches the model and the manifest."""
    registry = default_registry()

    def job(label: int, output: Path):
        data = {
            "name": "c",
            "output": {"uri": str(output)},
            "generate": {"model": "darkroom-vae-digits", "samples": 4, "seed": 1, "class_label": label},
        }
        return parse_job(data | {"resources": {"batch_size": 4, "shard_size": 4}}, registry)

    assert api.run(job(3, tmp_path / "three"), registry).counts == {"ok": 4}
    assert api.run(job(5, tmp_path / "five"), registry).counts == {"ok": 4}
    threes, fives = sample_bytes(tmp_path / "three"), sample_bytes(tmp_path / "five")
    assert sorted(threes) == sorted(fives) == [0, 1, 2, 3] and all(threes[i] != fives[i] for i in threes)
    assert rows_of(tmp_path / "three").execute(
        "SELECT DISTINCT class_label, sampler, sampler_steps FROM m"
    ).fetchall() == [(3, "vae", 1)]
    with pytest.raises(JobError, match="generate.class_label: must be < 10"):
        job(10, tmp_path / "ten")


JOB = """\
name: digits
output:
  uri: {output}
generate:
  model: tiny-ddpm
  params: {{steps: 4}}
  samples: 6
  seed: 7
resources: {{shard_size: 4, batch_size: 2}}
"""


def test_cli_run_plan_and_report_grid(ray_local, registry, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    from tests.pipeline.test_report import chromium_path

    # The CLI builds the default registry; here it gets the one holding the tiny model.
    monkeypatch.setattr(cli, "default_registry", lambda: registry)
    monkeypatch.setattr(api, "default_registry", lambda: registry)
    path = tmp_path / "gen.yaml"
    path.write_text(JOB.format(output=tmp_path / "out"))
    runner = CliRunner()
    planned = runner.invoke(cli.main, ["plan", str(path)])
    assert planned.exit_code == 0, planned.output
    assert "samples: 6 (generate://tiny-ddpm/7/0-5; 6 new, 0 changed, 0 unchanged, 0 failed)" in planned.output
    assert "shards:  2" in planned.output

    result = runner.invoke(cli.main, ["run", str(path), "--log-format", "plain"])
    assert result.exit_code == 0, result.output
    assert "6 ok" in result.output and f"images:   {tmp_path / 'out'}/images/" in result.output
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [f"{i:08d}.png" for i in range(6)]
    assert rows_of(tmp_path / "out").execute("SELECT count(*), count(DISTINCT input_uri) FROM m").fetchone() == (6, 6)
    again = runner.invoke(cli.main, ["plan", str(path)])
    assert "0 new, 0 changed, 6 unchanged, 0 failed" in again.output and "to run:  0" in again.output

    shown = runner.invoke(cli.main, ["report", str(tmp_path / "out")])
    assert shown.exit_code == 0, shown.output
    page_html = (tmp_path / "out" / "report.html").read_text()
    assert page_html.count('<article class="item sample"') == 6 and 'alt="before"' not in page_html
    assert ">#0</span>" in page_html and "ddim 4 steps · seed 7" in page_html
    console = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
            page.goto((tmp_path / "out" / "report.html").as_uri())
            names = page.locator("#grid .item .name").all_inner_texts()
            assert names == [f"#{i}" for i in range(6)]  # in index order
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            assert images == [["sample", True, 8]] * 6
            widths = page.locator("#grid .item").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
            assert len(set(widths)) == 1 and widths[0] < 200  # a grid of small cards, several per row
        finally:
            browser.close()
    assert console == []


def problems(tmp_path, registry, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(JobError) as err:
        load_job(path, registry)
    return err.value.problems


GOOD = JOB.format(output="/tmp/never-written")


def test_job_file_errors_name_the_field(tmp_path, registry):
    (tmp_path / "ok.yaml").write_text(GOOD)
    job = load_job(tmp_path / "ok.yaml", registry)
    assert job.generate.samples == 6 and job.generate.start == 0 and job.input is None and job.steps is None

    [both] = problems(tmp_path, registry, GOOD + "input: {uri: /in}\nsteps: [{model: bicubic}]\n")
    assert both.startswith(f"{tmp_path / 'job.yaml'}:5: generate: ") and "not both" in both
    [neither] = problems(tmp_path, registry, "name: x\noutput: {uri: /o}\n")
    assert "`input` + `steps` (restoration) or `generate` (generation)" in neither
    [no_steps] = problems(tmp_path, registry, "name: x\ninput: {uri: /in}\noutput: {uri: /o}\n")
    assert ": steps: required with `input`" in no_steps
    [label] = problems(tmp_path, registry, GOOD.replace("  seed: 7\n", "  seed: 7\n  class_label: 3\n"))
    assert f"{tmp_path / 'job.yaml'}:9: generate.class_label: tiny-ddpm is unconditional" in label
    [unknown] = problems(tmp_path, registry, GOOD.replace("model: tiny-ddpm", "model: tiny-ddmp"))
    assert ":5: generate.model: unknown model 'tiny-ddmp'; did you mean 'tiny-ddpm'?" in unknown
    [restorer] = problems(tmp_path, registry, GOOD.replace("model: tiny-ddpm", "model: bicubic"))
    assert "generate.model: bicubic is a resample model, not a generation model (generation models: " in restorer
    assert "tiny-ddpm, tiny-ddpm-flaky" in restorer
    [in_steps] = problems(
        tmp_path, registry, "name: x\ninput: {uri: /in}\noutput: {uri: /o}\nsteps: [{model: tiny-ddpm}]\n"
    )
    assert ":4: steps.0.model: tiny-ddpm generates images: use it under `generate:`" in in_steps
    [count] = problems(tmp_path, registry, GOOD.replace("samples: 6", "samples: 0"))
    assert ":7: generate.samples: Input should be greater than or equal to 1" in count
    [param] = problems(tmp_path, registry, GOOD.replace("{steps: 4}", "{steps: 4, guidance: 2}"))
    assert "generate.params.guidance: unknown param" in param
    [same] = problems(
        tmp_path, registry, GOOD.replace("  uri: /tmp/never-written\n", "  uri: /tmp/never-written\n  format: same\n")
    )
    assert "output.format: `same` follows an input's format" in same


def test_fingerprint_covers_what_decides_the_pixels(registry, tmp_path):
    base = gen_job(registry, tmp_path).fingerprint(registry)
    assert gen_job(registry, tmp_path, samples=99, start=3, shard_size=1, batch_size=1).fingerprint(registry) == base
    for changed in (
        gen_job(registry, tmp_path, seed=SEED + 1),
        gen_job(registry, tmp_path, model="tiny-ddpm-unknown"),
        parse_job(
            gen_job(registry, tmp_path).model_dump() | {"output": {"uri": str(tmp_path), "format": "webp"}}, registry
        ),
    ):
        assert changed.fingerprint(registry) != base
    with_params = gen_job(registry, tmp_path).model_dump()
    with_params["generate"]["params"] = {"steps": 5}
    assert parse_job(with_params, registry).fingerprint(registry) != base
