"""The HTML report, looked at in a real headless Chromium (Debian's, driven by Playwright).

CI installs chromium (.ci/run); without it the browser test fails with a message rather
than skipping. Set DARKROOM_CHROMIUM to use another Chromium/Chrome binary.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from PIL import Image

from models import default_registry
from pipeline import api, report, runs
from pipeline.cli import main
from pipeline.job import parse_job
from tests.corpus import MAX_BYTES, MAX_PIXELS

SCREENSHOT_COPY = Path("/tmp/darkroom-report.png")
ODD_NAME = "odd/<img src=x onerror=alert(1)> & 'q'.png"  # must show up as text, never as markup


def job(input_uri: str, output_uri: str, model: str = "bicubic", **params):
    return parse_job(
        {
            "name": "report",
            "input": {"uri": input_uri},
            "output": {"uri": output_uri, "format": "png"},
            "steps": [{"model": model, "params": params or {"scale": 2}}],
            "resources": {"actors": 1, "batch_size": 4, "shard_size": 32},  # one shard: fewer Ray round trips
            "limits": {"max_pixels": MAX_PIXELS, "max_bytes": MAX_BYTES},
        },
        default_registry(),
    )


def chromium_path() -> str:
    path = os.environ.get("DARKROOM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "chromium not found: the report test needs a real browser. Install it with "
            "`apt-get install -y chromium` (.ci/run does) or set DARKROOM_CHROMIUM to a Chromium binary."
        )
    return path


def test_report_in_headless_chromium(ray_local, corpus_dir, tmp_path, corpus):
    from playwright.sync_api import sync_playwright

    (corpus_dir / ODD_NAME).parent.mkdir()
    (corpus_dir / ODD_NAME).write_bytes((corpus_dir / "png/rgb.png").read_bytes())
    out = tmp_path / "out"
    api.run(job(str(corpus_dir), str(out)))
    # A second run on part of the input with another model: the report shows each input's latest row.
    api.run(job(str(corpus_dir / "png"), str(out), model="lanczos", scale=1.5))
    first, second = runs.load_all(str(out))
    # Files gone since the run: the report shows placeholders instead of failing.
    Path(out / "images/jpeg/rgb.jpg.png").unlink()
    (corpus_dir / "bmp/rgb.bmp").unlink()

    expected = {n: s for n, (_, s) in corpus.items() if s != "skip"} | {ODD_NAME: "ok"}
    n_errors = sum(1 for s in expected.values() if s != "ok")
    n_png = sum(1 for n in expected if n.startswith("png/"))

    where = report.write_report(str(out))
    assert where == f"{out}/report.html"
    page_html = Path(where).read_text()
    assert "<img src=x" not in page_html and "&lt;img src=x onerror=alert(1)&gt; &amp; &#x27;q&#x27;.png" in page_html

    console, requests = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(5000)
            page.on(
                "console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
            )
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            page.on("dialog", lambda d: (console.append(f"dialog: {d.message}"), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(Path(where).as_uri())
            page.wait_for_load_state("load")

            items = page.locator("#grid .item")
            assert items.count() == len(expected)
            assert page.locator("#grid .item:visible").count() == len(expected)
            assert page.locator("#shown").inner_text() == str(len(expected))

            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            assert images and all(complete and width > 0 for _, complete, width in images), images
            # ok items have both pictures, except the two whose files were deleted; error items have an input picture
            # unless the input was refused before decoding (too large / too many pixels) or is not decodable.
            assert sum(1 for alt, *_ in images if alt == "after") == len(expected) - n_errors - 1
            placeholders = page.locator(".placeholder").all_inner_texts()
            assert "cannot read (FileNotFoundError)" in placeholders and placeholders.count("no output") == n_errors
            assert "not previewed (too_many_pixels)" in placeholders and "not previewed (too_large)" in placeholders

            errors_text = page.locator("table.errors").inner_text()
            for name, status in expected.items():
                if status != "ok":
                    assert name in errors_text and status in errors_text, name
            assert page.locator("table.errors tbody tr").count() == n_errors
            assert page.locator("#errors-title").inner_text() == f"Errors ({n_errors})"

            runs_text = page.locator("table.runs").inner_text()
            assert first.run_id in runs_text and second.run_id in runs_text and "committed" in runs_text

            page.select_option("#f-status", "error")
            assert page.locator("#grid .item:visible").count() == n_errors
            assert page.locator("#grid .item:visible .badge.ok").count() == 0
            assert page.locator("#shown").inner_text() == str(n_errors)
            page.select_option("#f-status", "ok")
            assert page.locator("#grid .item:visible").count() == len(expected) - n_errors
            page.select_option("#f-status", "")
            page.select_option("#f-model", "lanczos")
            assert page.locator("#grid .item:visible").count() == n_png
            page.select_option("#f-model", "")
            assert page.locator("#grid .item:visible").count() == len(expected)
            assert page.get_by_text(ODD_NAME, exact=True).count() == 1

            # The slider comparison: the "after" pane is clipped at the chosen split.
            card = page.locator("#grid .item", has=page.locator(".cmp-toggle")).first
            card.locator(".cmp-toggle").check()
            card.locator(".cmp-range").fill("30")
            clip = card.locator(".pane.after").evaluate("e => getComputedStyle(e).clipPath")
            assert clip == "inset(0px 0px 0px 30%)", clip
            card.locator(".cmp-toggle").uncheck()

            # Each shown output opens at full resolution: relative links that resolve to the files themselves.
            hrefs = page.evaluate("Array.from(document.querySelectorAll('#grid a')).map(a => a.href)")
            assert len(hrefs) == len(expected) - n_errors - 1  # one output file was deleted: no thumbnail, no link
            for href in hrefs:
                target = Path(urllib.parse.unquote(urllib.parse.urlsplit(href).path))
                assert target.is_file() and out / "images" in target.parents, href

            # The runs table fits a 1,000-px window without scrolling sideways.
            page.set_viewport_size({"width": 1000, "height": 900})
            box = page.locator("table.runs").bounding_box()
            assert box["x"] + box["width"] <= 1000, box
            assert page.evaluate("document.documentElement.scrollWidth") <= 1000
            page.set_viewport_size({"width": 1400, "height": 900})

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    shutil.copyfile(shot, SCREENSHOT_COPY)
    assert Image.open(shot).size[0] == 1400
    assert console == [], console
    assert all(u.startswith(("file:", "data:")) for u in requests), [
        u for u in requests if not u.startswith(("file:", "data:"))
    ]


def test_report_on_s3_and_cli(ray_local, s3_bucket, corpus, tmp_path):
    small = {
        k: v for k, v in corpus.items() if k in ("jpeg/rgb.jpg", "png/la.png", "png/gray16.png", "broken/truncated.png")
    }
    s3 = boto3.client("s3")
    for name, (data, _) in small.items():
        s3.put_object(Bucket=s3_bucket, Key=f"in/{name}", Body=data)
    output = f"s3://{s3_bucket}/out"
    summary = api.run(job(f"s3://{s3_bucket}/in", output))
    assert summary.counts == {"ok": 3, "error": 1}

    where = report.write_report(output)
    assert where == f"{output}/report.html"
    page = s3.get_object(Bucket=s3_bucket, Key="out/report.html")["Body"].read().decode()
    assert page.count('<article class="item"') == 4
    assert page.count('<img src="data:image/') == 2 * 3  # ok pairs; the truncated input cannot be decoded:
    assert page.count('<div class="placeholder"') == 2 and "cannot decode (OSError)" in page  # its placeholders
    for name in small:
        assert f">{name}</span>" in page
    assert (
        f'title="s3://{s3_bucket}/in/broken/truncated.png">broken/truncated.png</td><td>corrupt</td><td>decode</td>'
        in page
    )
    assert summary.run_id in page and "http://" not in page and "https://" not in page
    [actor] = summary.actors  # one actor: its busy fraction in the runs table, its batches in the tooltip
    assert f"{actor['id']}: {actor['busy_fraction']:.0%} busy, {actor['batches']} batches" in page
    assert f"1 × {actor['busy_fraction']:.0%}</span>" in page

    # Beyond max_items: counted, not embedded. The CLI writes where --out says and prints it.
    dest = tmp_path / "r.html"
    result = CliRunner().invoke(
        main, ["report", output, "--run", summary.run_id, "--out", str(dest), "--max-items", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(dest)
    small_page = dest.read_text()
    assert small_page.count('<article class="item"') == 1
    assert "3 more items not shown: 3 ok" in small_page  # items in input order: broken/… comes first

    missing = CliRunner().invoke(main, ["report", output, "--run", "no-such-run"])
    assert missing.exit_code == 1 and "no run no-such-run" in missing.output


def test_schema_command_prints_job_json_schema():
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["title"] == "Job" and {"name", "output"} <= set(schema["required"])
    assert {"input", "steps", "generate"} <= set(schema["properties"])  # restoration or generation
    assert schema["additionalProperties"] is False
    assert "\n  " in result.output  # indented for humans
