"""One self-contained HTML page about an output: before/after pairs (a grid of samples for
generation runs), errors, run statistics.

``write_report`` reads the committed manifest (``pipeline.manifest.read``) and the run
records (``pipeline.runs.load_all``), embeds small thumbnails of inputs and outputs as
``data:`` URIs, and writes ``<output>/report.html`` (or ``dest``) through
``pipeline.storage``, so it works wherever the output lives. The page needs no network:
CSS and JS are inline, and its Content-Security-Policy forbids loading anything else.

Rendering is plain f-strings: every value that comes from a manifest or a run record goes
through ``_e`` (``html.escape``); nothing else is interpolated.
"""

from __future__ import annotations

import base64
import html
import io
import posixpath
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageOps

from pipeline import __version__, manifest, runs, storage
from pipeline.manifest import Stage, Status

THUMB_PX = 256  # long side of embedded thumbnails; also the display frame of each image
MAX_ERRORS = 1000  # rows of the error list; beyond that, a count
PREVIEW_MAX_BYTES = 64_000_000  # inputs larger than this are not downloaded for a thumbnail
NO_PREVIEW_ERRORS = {"too_large", "too_many_pixels"}  # refused inputs are not decoded here either
STAGES = (Stage.READ, Stage.DECODE, Stage.MODEL, Stage.ENCODE, Stage.WRITE)  # those with a t_<stage> column
READ_THREADS = 8


def _e(value) -> str:
    """Escaped text for HTML content and attribute values; None → ''."""
    return "" if value is None else html.escape(str(value), quote=True)


# ---- thumbnails ----


def thumbnail(data: bytes, size: int = THUMB_PX) -> str:
    """A ``data:`` URI of a preview of image ``data``, at most ``size`` px on its long side.

    JPEG for opaque images, PNG where there is transparency. EXIF orientation is applied
    (manifest sizes are after rotation); 16-bit and float images are scaled to 8 bits.
    Raises whatever Pillow raises for data it cannot decode.
    """
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            if im.mode.startswith("I;16"):
                arr = arr / 257
            else:
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) * (255 / (hi - lo) if hi > lo else 0)
            im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if has_alpha:
            im.save(buf, format="PNG", optimize=True)
            mime = "image/png"
        else:
            im.save(buf, format="JPEG", quality=80)
            mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


@dataclass
class Preview:
    src: str | None  # data: URI, or None with a note saying why there is no picture
    note: str = ""


def _preview(uri: str | None, storage_options: dict | None, skip: str | None = None) -> Preview:
    if skip:
        return Preview(None, skip)
    if not uri:
        return Preview(None, "no output")
    try:
        data = storage.read_bytes(uri, storage_options)
    except Exception as exc:  # missing, denied, unreachable: the page still renders
        return Preview(None, f"cannot read ({type(exc).__name__})")
    try:
        return Preview(thumbnail(data))
    except Exception as exc:
        return Preview(None, f"cannot decode ({type(exc).__name__})")


# ---- data ----


def _latest_per_input(table: pa.Table) -> pa.Table:
    """The last committed row of each input. Parts are read in run order (run ids sort by start)."""
    if table.num_rows == 0:
        return table
    indexed = table.append_column("_i", pa.array(np.arange(table.num_rows)))
    keep = indexed.group_by("input_uri").aggregate([("_i", "max")])["_i_max"]
    return table.take(keep)


def _counts(table: pa.Table, column: str) -> dict[str, int]:
    """Value of ``column`` → rows, in value order."""
    if table.num_rows == 0:
        return {}
    grouped = table.group_by(column).aggregate([([], "count_all")]).sort_by(column)
    return dict(zip(map(str, grouped[column].to_pylist()), grouped["count_all"].to_pylist()))


def _stage_means(table: pa.Table) -> dict[str, dict[str, float | None]]:
    """run_id → stage → mean seconds per image (over rows that reached the stage)."""
    if table.num_rows == 0:
        return {}
    grouped = table.group_by("run_id").aggregate([(f"t_{s}", "mean") for s in STAGES])
    out = {}
    for row in grouped.to_pylist():
        out[row["run_id"]] = {s: row[f"t_{s}_mean"] for s in STAGES}
    return out


def _common_dir(uris: list[str]) -> str:
    prefix = posixpath.commonprefix(uris) if uris else ""
    return prefix[: prefix.rfind("/") + 1]


# ---- rendering ----


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _dims(w, h) -> str:
    return f"{w}×{h}" if w is not None and h is not None else "?"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f}"


def _frame(p: Preview, label: str, href: str | None = None) -> str:
    if p.src and href:  # the thumbnail opens the full-resolution file
        return f'<a href="{_e(href)}" title="full resolution"><img src="{p.src}" alt="{_e(label)}"></a>'
    if p.src:
        return f'<img src="{p.src}" alt="{_e(label)}">'
    return f'<div class="placeholder" role="img" aria-label="{_e(label)}">{_e(p.note)}</div>'


def link(uri: str | None, report_dir: str) -> str | None:
    """Where a link from a report in ``report_dir`` to the file ``uri`` should point: a relative path when the
    file lies below the report (the default report at the output root; it keeps working when the folder is
    copied or served), else a ``file://`` URL for local paths, else the URI itself."""
    if not uri:
        return None
    base = report_dir.rstrip("/") + "/"
    if uri.startswith(base):
        return urllib.parse.quote(uri[len(base) :])
    if "://" not in uri or uri.startswith("file://"):
        return "file://" + urllib.parse.quote(uri.removeprefix("file://"))
    return uri


def _item_html(row: dict, before: Preview, after: Preview, root: str, href: str | None = None) -> str:
    uri = row["input_uri"]
    name = _relative(uri, root)
    models = row["models"] or []
    status = row["status"]
    before_cap = " · ".join(
        x
        for x in (_dims(row["width_in"], row["height_in"]), row["format_in"], row["mode_in"], _size(row["input_size"]))
        if x
    )
    after_cap = (
        _dims(row["width_out"], row["height_out"]) + (f" · {row['format_out']}" if row["format_out"] else "")
        if status == Status.OK
        else "—"
    )
    error = ""
    if status != Status.OK:
        error = f'<p class="err">{_e(row["error_type"])} at {_e(row["stage"])}: {_e(row["error_message"])}</p>'
    caption = f'<p class="caption">“{_e(row["caption"])}”</p>' if row.get("caption") else ""
    compare = ""
    if before.src and after.src:
        compare = (
            '<label class="cmp">compare <input type="checkbox" class="cmp-toggle"></label>'
            '<input type="range" class="cmp-range" min="0" max="100" value="50" aria-label="split">'
        )
    return f"""
<article class="item" data-status="{_e(status)}" data-models="{_e("|".join(models))}">
  <header><span class="badge {_e(status)}">{_e(status)}</span>
    <span class="name" title="{_e(uri)}">{_e(name)}</span></header>
  <div class="pair">
    <figure class="pane before"><div class="frame">{_frame(before, "before")}</div>
      <figcaption>before · {_e(before_cap)}</figcaption></figure>
    <figure class="pane after"><div class="frame">{_frame(after, "after", href)}</div>
      <figcaption>after · {_e(after_cap)}</figcaption></figure>
  </div>
  {caption}<p class="models">{_e(" → ".join(models))}</p>{error}{compare}
</article>"""


def _sample_html(row: dict, image: Preview, href: str | None = None) -> str:
    """A generated sample's card: the image alone (there is no "before"), its index, its prompt (text-to-image)
    and how it was made."""
    status = row["status"]
    models = row["models"] or []
    made = [
        " → ".join(models),
        f"{row['sampler']} {row['sampler_steps']} step{'' if row['sampler_steps'] == 1 else 's'}"
        if row["sampler"]
        else "",
        f"seed {row['seed']}",
    ]
    if row["class_label"] is not None:
        made.append(f"class {row['class_label']}")
    number = f"{row['sample_index']}"
    prompt = ""
    if row.get("prompt") is not None:  # text-to-image: the prompt beside the image
        number = f"{row['prompt_index']}-{row['sample_index']}"
        if row.get("guidance_scale") is not None:
            made.append(f"guidance {row['guidance_scale']:g}")
        negative = row.get("negative_prompt")
        prompt = f'\n  <p class="prompt">{_e(row["prompt"])}</p>' + (
            f'\n  <p class="prompt negative">not: {_e(negative)}</p>' if negative else ""
        )
    error = ""
    if status != Status.OK:
        error = f'<p class="err">{_e(row["error_type"])} at {_e(row["stage"])}: {_e(row["error_message"])}</p>'
    dims = _dims(row["width_out"], row["height_out"]) if status == Status.OK else "—"
    return f"""
<article class="item sample" data-status="{_e(status)}" data-models="{_e("|".join(models))}">
  <header><span class="badge {_e(status)}">{_e(status)}</span>
    <span class="name" title="{_e(row["input_uri"])}">#{_e(number)}</span></header>
  <figure class="pane"><div class="frame">{_frame(image, "sample", href)}</div>
    <figcaption>{_e(dims)}</figcaption></figure>{prompt}
  <p class="models">{_e(" · ".join(x for x in made if x))}</p>{error}
</article>"""


def _when(iso: str | None) -> str:
    """``2026-12-07T18:03:09+00:00`` → ``2026-12-07 18:03:09`` (the page says the times are UTC)."""
    return "–" if not iso else iso.replace("T", " ").removesuffix("+00:00")


def _runs_html(records: list[runs.RunRecord], means: dict[str, dict]) -> str:
    """One row per run, in seven columns so that the table fits a 1,000-px window (the fourteen it had
    needed ~1,500 px); per-stage times share one cell, the model actors' busy fractions another."""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("run · job", "status", "started · finished (UTC)", "listed · inputs · shards", "counts")
    )
    head += f"<th>ms per image: {' · '.join(STAGES)}</th><th>actors busy</th>"
    body = []
    for r in records:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(r.counts.items())) or "–"
        m = means.get(r.run_id, {})
        cells = [
            f"{_e(r.run_id)}<br>{_e(r.job_name)}",
            _e(r.status),
            f"{_e(_when(r.started_at))}<br>{_e(_when(r.finished_at))}",
            f"{_e(r.listed)} · {_e(r.inputs)} · {_e(r.shards)}",
            _e(counts),
            " · ".join(_ms(m.get(s)) for s in STAGES),
            _busy(r.actors),
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _busy(actors: list[dict]) -> str:
    """The model actors' busy fractions (time in forward passes over their life): the mean and the
    range in the cell, each actor in its tooltip; ``–`` for a run that recorded none."""
    known = [a for a in actors if a.get("busy_fraction") is not None]
    if not known:
        return "–"
    fractions = [a["busy_fraction"] for a in known]
    each = "\n".join(f"{a['id']}: {a['busy_fraction']:.0%} busy, {a['batches']} batches" for a in known)
    spread = f" ({min(fractions):.0%}–{max(fractions):.0%})" if len(known) > 1 else ""
    text = f"{len(known)} × {sum(fractions) / len(known):.0%}{spread}"
    return f'<span title="{_e(each)}">{_e(text)}</span>'


def _relative(uri: str, root: str) -> str:
    return uri[len(root) :] if root and uri.startswith(root) else uri


def _errors_html(errors: list[dict], total: int, root: str) -> str:
    if not total:
        return '<p class="none">No errors.</p>'
    rows = "".join(
        '<tr><td class="uri" '
        f'title="{_e(r["input_uri"])}">{_e(_relative(r["input_uri"], root))}</td>'
        f'<td>{_e(r["error_type"])}</td><td>{_e(r["stage"])}</td><td class="msg">{_e(r["error_message"])}</td></tr>'
        for r in errors
    )
    more = f'<p class="more">{total - len(errors)} more errors not listed.</p>' if total > len(errors) else ""
    head = "<tr><th>input</th><th>error_type</th><th>stage</th><th>message</th></tr>"
    return f'<table class="errors"><thead>{head}</thead><tbody>{rows}</tbody></table>{more}'


CSS = """
:root { --frame: %(px)dpx; font: 14px/1.4 system-ui, sans-serif; color: #1d1d1f; background: #f5f5f7; }
body { margin: 0 auto; max-width: 1400px; padding: 16px 24px; }
h1 { margin: 0 0 4px; font-size: 22px; } h2 { font-size: 17px; margin: 24px 0 8px; }
.meta { color: #555; margin: 0; }
table { border-collapse: collapse; background: #fff; font-size: 13px; width: 100%%; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.uri, td.msg { word-break: break-all; }
.totals span { margin-right: 16px; }
.scroll { overflow-x: auto; }
table.runs td { white-space: nowrap; }
.filters { display: flex; gap: 16px; align-items: center; margin-bottom: 12px; }
#grid { display: flex; flex-wrap: wrap; gap: 12px; }
[hidden] { display: none !important; }
.item { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px;
  width: calc(2 * var(--frame) + 24px); }
.item.sample { --frame: %(sample_px)dpx; width: calc(var(--frame) + 16px); }
.item header { display: flex; gap: 6px; align-items: baseline; margin-bottom: 6px; }
.name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
  font-family: ui-monospace, monospace; font-size: 12px; }
.badge { border-radius: 3px; padding: 0 5px; font-size: 12px; color: #fff; background: #777; }
.badge.ok { background: #2e7d32; } .badge.error { background: #c62828; }
.pair { display: flex; gap: 8px; }
.pane { margin: 0; }
.frame { width: var(--frame); height: var(--frame); display: flex; align-items: center; justify-content: center;
  background: repeating-conic-gradient(#e8e8e8 0 25%%, #fff 0 50%%) 0 0 / 16px 16px; }
.frame img { width: 100%%; height: 100%%; object-fit: contain; image-rendering: pixelated; display: block; }
.placeholder { color: #777; font-size: 12px; text-align: center; padding: 8px; background: #f0f0f0;
  border: 1px dashed #bbb; }
figcaption { font-size: 12px; color: #555; margin-top: 2px; }
.models { font-size: 12px; margin: 4px 0 0; color: #333; }
.prompt { font-size: 13px; margin: 4px 0 0; font-style: italic; overflow-wrap: anywhere; }
.caption { font-size: 13px; margin: 4px 0 0; overflow-wrap: anywhere; }
.prompt.negative { color: #666; }
.err { font-size: 12px; margin: 4px 0 0; color: #c62828; word-break: break-all; }
.cmp { font-size: 12px; margin-right: 8px; }
.cmp-range { display: none; width: var(--frame); vertical-align: middle; }
.item.comparing .cmp-range { display: inline-block; }
.item.comparing .pair { position: relative; width: var(--frame); height: var(--frame); }
.item.comparing .pane { position: absolute; inset: 0; }
.item.comparing .pane.after { clip-path: inset(0 0 0 var(--split, 50%%)); }
.item.comparing figcaption { display: none; }
.more { color: #555; }
""" % {"px": THUMB_PX, "sample_px": THUMB_PX // 2}

JS = """
(() => {
  const items = Array.from(document.querySelectorAll('#grid .item'));
  const status = document.getElementById('f-status'), model = document.getElementById('f-model');
  const shown = document.getElementById('shown');
  function apply() {
    let n = 0;
    for (const el of items) {
      const ok = (!status.value || el.dataset.status === status.value) &&
                 (!model.value || el.dataset.models.split('|').includes(model.value));
      el.hidden = !ok;
      if (ok) n++;
    }
    shown.textContent = n;
  }
  status.addEventListener('change', apply);
  model.addEventListener('change', apply);
  document.getElementById('grid').addEventListener('input', (ev) => {
    const item = ev.target.closest('.item');
    if (ev.target.classList.contains('cmp-toggle')) item.classList.toggle('comparing', ev.target.checked);
    if (ev.target.classList.contains('cmp-range')) item.style.setProperty('--split', ev.target.value + '%');
  });
  apply();
})();
"""


def _options(values: list[str], label: str) -> str:
    return f'<option value="">all {label}</option>' + "".join(
        f'<option value="{_e(v)}">{_e(v)}</option>' for v in values
    )


def render(
    output_uri: str,
    storage_options: dict | None = None,
    run_id: str | None = None,
    max_items: int = 200,
    report_dir: str | None = None,
) -> str:
    """The report's HTML (see ``write_report``); links to outputs are made for a page in ``report_dir``
    (default: the output root)."""
    report_dir = output_uri if report_dir is None else report_dir
    records = [r for r in runs.load_all(output_uri, storage_options) if run_id is None or r.run_id == run_id]
    rows = manifest.read(output_uri, storage_options, run_id)
    if not records and rows.num_rows == 0:
        raise LookupError(f"no run {run_id} under {output_uri}" if run_id else f"no runs under {output_uri}")
    means = _stage_means(rows)
    current = _latest_per_input(rows)
    current = current.sort_by(
        [
            ("prompt_index", "ascending"),
            ("seed", "ascending"),
            ("sample_index", "ascending"),
            ("input_uri", "ascending"),
        ]
    )  # samples in index order (text-to-image: in prompt order)
    totals = _counts(current, "status")

    errors_table = current.filter(pc.not_equal(current["status"], Status.OK))
    error_rows = (
        errors_table.slice(0, MAX_ERRORS).select(["input_uri", "error_type", "stage", "error_message"]).to_pylist()
    )

    shown = current.slice(0, max_items).to_pylist()
    rest = _counts(current.slice(max_items), "status") if current.num_rows > max_items else {}
    root = _common_dir([r["input_uri"] for r in shown + error_rows])  # names below it are shown

    def previews(row: dict) -> tuple[Preview, Preview]:
        if row["sample_index"] is not None:  # generated: no input to show
            return Preview(None, "generated"), _preview(
                row["output_uri"], storage_options, None if row["status"] == Status.OK else "no output"
            )
        skip = None
        if row["error_type"] in NO_PREVIEW_ERRORS:
            skip = f"not previewed ({row['error_type']})"
        elif (row["input_size"] or 0) > PREVIEW_MAX_BYTES:
            skip = "not previewed (large)"
        before = _preview(row["input_uri"], storage_options, skip)
        if row["status"] == Status.OK and row["format_out"] is None:  # a caption-only job: no image was written
            return before, Preview(None, "no image (captions only)")
        after = _preview(row["output_uri"], storage_options, None if row["status"] == Status.OK else "no output")
        return before, after

    with ThreadPoolExecutor(READ_THREADS) as pool:
        pairs = list(pool.map(previews, shown))

    def card(row: dict, before: Preview, after: Preview) -> str:
        href = link(row["output_uri"], report_dir) if row["status"] == Status.OK else None
        if row["sample_index"] is not None:
            return _sample_html(row, after, href)
        return _item_html(row, before, after, root, href)

    cards = "".join(card(row, b, a) for row, (b, a) in zip(shown, pairs))

    statuses = sorted({r["status"] for r in shown})
    models = sorted({m for r in shown for m in (r["models"] or [])})
    more = ""
    if rest:
        more = (
            f'<p class="more" id="not-shown">{sum(rest.values())} more items not shown: '
            + ", ".join(f"{n} {_e(s)}" for s, n in rest.items())
            + "</p>"
        )
    scope = f"run {_e(run_id)}" if run_id else f"{len(records)} run(s); the latest row of each input"
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    totals_html = "".join(
        f'<span class="total" data-status="{_e(s)}"><b>{n}</b> {_e(s)}</span>' for s, n in totals.items()
    )
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>darkroom report · {_e(output_uri)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>darkroom report</h1>
<p class="meta">output {_e(output_uri)} · {scope} · generated {_e(generated)} by darkroom {_e(__version__)}</p>
<p class="meta">inputs below {_e(root or "/")}</p>

<h2>Runs</h2>
{_runs_html(records, means)}
<p class="totals">{current.num_rows} inputs: {totals_html}</p>

<h2 id="errors-title">Errors ({errors_table.num_rows})</h2>
{_errors_html(error_rows, errors_table.num_rows, root)}

<h2>Items</h2>
<div class="filters">
  <label>status <select id="f-status">{_options(statuses, "statuses")}</select></label>
  <label>model <select id="f-model">{_options(models, "models")}</select></label>
  <span><b id="shown">{len(shown)}</b> of {len(shown)} shown</span>
</div>
<div id="grid">{cards}
</div>
{more}
<script>{JS}</script>
</body>
</html>
"""


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def write_report(
    output_uri: str,
    storage_options: dict | None = None,
    run_id: str | None = None,
    dest: str | None = None,
    max_items: int = 200,
) -> str:
    """Write the HTML report of ``output_uri`` (one run, if ``run_id``) and return where it went.

    Without ``run_id`` the items are the latest committed row of each input across runs.
    At most ``max_items`` items get thumbnails; the rest are counted. The default
    destination is ``<output>/report.html``. Raises LookupError when there is nothing to report.
    """
    target = dest or storage.join(output_uri, "report.html")
    page = render(output_uri, storage_options, run_id, max_items, report_dir=posixpath.dirname(target))
    same_store = dest is None or _protocol(dest) == _protocol(output_uri)
    storage.write_atomic(target, page.encode("utf-8"), storage_options if same_store else None)
    return target
