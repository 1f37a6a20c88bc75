"""The scorecard's Markdown report and self-contained HTML page (evals/scorecard.py renders
through this file; it has no command line of its own).

Everything here reads the scorecard dict that evals/scorecard.py builds (the JSON it writes):
the recommendation and how sure, the judge (identity against held-out or training photos,
memorisation, rigidity, pose, the no-LoRA baseline, the over-training verdict), the ranked
configs, the comparison with an earlier run, failed and excluded images. The HTML holds its
thumbnails as data URIs and its charts as inline SVG: checkpoint curves (identity, realism,
copy rate and rigidity against step, one line per strength/CFG), identity against yaw, and a
2-D PCA map of reference and generated embeddings. No script, no font or image from the
network: the page opens offline, from a file.

Usage (through the scorecard):
  python3 evals/scorecard.py --demo build/demo        # writes build/demo/report.html
  python3 evals/scorecard.py --generated OUT --reference REF --lora-version v3 --html r.html
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from decimal import Decimal
from pathlib import Path, PurePosixPath

import numpy as np

UNPARSED = "unparsed"
THUMB_SIZE = 160


# Copied from evals/scorecard.py:format_number
def format_number(value: float, decimals: int = 0) -> str:
    """`value` with at least `decimals` decimals and as many more as it needs (0.8 -> 0.80)."""
    value = float(value) + 0.0  # no "-0"
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    fraction = text.split(".", 1)[1].rstrip("0") if "." in text else ""
    return f"{value:.{max(decimals, len(fraction))}f}"


# --------------------------------------------------------------------------- Markdown

def _f(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _signed(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:+d}" if isinstance(value, int) else f"{value:+.{digits}f}"


def _range(pair, formatter=_f, joiner: str = " .. ") -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return "-"
    return f"{formatter(pair[0])}{joiner}{formatter(pair[1])}"


GRADE_WORDS = {
    "A": "strong: identity and skin both hold",
    "B": "good: usable, check the weakest metric",
    "C": "borderline: identity or realism is weak",
    "D": "weak: most images miss the person or look artificial",
    "F": "failing: the person is not there",
}


def headline(scorecard: dict, *, code: str = "`") -> list[tuple[str, str]]:
    """The report's first lines, as (label, text): the recommendation, how sure, the sweep."""
    s = scorecard
    best = s.get("recommendation")
    sweep = (f"grade {s['overall_grade']} (score {_f(s['score'], 2)}) over "
             f"{s['overall_grade_basis']}. A sweep holds weak configs on purpose: judge the LoRA "
             "by its best config.")
    if not best:
        return [("Recommendation", "none: this sweep has no LoRA config (only a baseline), "
                 "so there is nothing to choose."), ("Whole sweep (context)", sweep)] \
            + judge_lines(s, code=code)
    interval = best["interval"]
    name = f"{code}{best['config']}{code}"
    if best["grade"] in "ABC" and best.get("flags"):
        # "use X" would contradict the flags and the over-training line below it.
        verb = (f"no config is clean; the best-scoring is {best['words']} ({name}), and it is "
                "flagged (Caution below)")
    elif best["grade"] in "ABC":
        verb = f"use {best['words']} ({name})"
    else:
        verb = (f"no config is ready; the best is {best['words']} ({name}), and it grades "
                f"{best['grade']} ({GRADE_WORDS[best['grade']].split(':')[0]})")
    recommendation = (
        f"{verb}: grade {best['grade']} on {best['grade_basis']}; identity "
        f"{_f(best['similarity_mean'])} (95% interval "
        f"{_range(interval['face_similarity_mean'])}), realism {_f(best['realism_mean'])}, "
        f"pass rate {_pct(best['pass_rate'])} ({best['passed']}/{best['images']}, interval "
        f"{_range(interval['pass_rate'], _pct)}), score {_f(best['score'], 2)} (interval "
        f"{_range(interval['score'], lambda v: _f(v, 2))}).")
    if best.get("flags"):
        recommendation += " Caution: it " + "; it ".join(best["flags"]) + "."
    alternative = best.get("unflagged_alternative")
    if alternative:
        recommendation += (f" It is flagged, but the best unflagged config, {code}"
                           f"{alternative['config']}{code} (score {_f(alternative['score'], 2)}, "
                           f"interval {_range(alternative['score_interval'], lambda v: _f(v, 2))}"
                           f"), is {alternative['why']}.")
    preferred = best.get("preferred_over")
    if preferred:
        passed = preferred.get("passed_over") or [preferred]
        recommendation += " Chosen over " + "; and over ".join(
            f"{code}{row['config']}{code} (score {_f(row['score'], 2)}, interval "
            f"{_range(row.get('score_interval'), lambda v: _f(v, 2))}), which "
            + "; ".join(row["flags"]) for row in passed) + (
            ": each scored higher, but is flagged, and its score is within reach of this "
            "unflagged config's (the 95% intervals overlap).")
    grades = interval["grades"]
    sure = [f"{best['how_sure']}: {best['images']} image{'s' if best['images'] != 1 else ''}",
            f"the interval spans grade {grades[0]}" + (f" to {grades[1]}"
                                                       if grades[0] != grades[1] else " only")
            + (", too wide to rely on" if best.get("interval_too_wide") else "")]
    runner = best.get("runner_up")
    if runner:
        difference = (f"score {_f(runner['score'], 2)}, difference "
                      f"{_f(runner['score_difference'], 2)}, interval "
                      f"{_range(runner['score_difference_interval'], lambda v: _f(v, 2))}")
        if runner["within_noise"]:
            either = "either will do, " if best["grade"] in "ABC" else ""
            sure.append(f"the runner-up {code}{runner['config']}{code} (grade {runner['grade']}, "
                        f"{difference}) is within noise of it: {either}more images would "
                        "separate them")
        else:
            sure.append(f"the runner-up {code}{runner['config']}{code} (grade {runner['grade']}, "
                        f"{difference}) is clearly behind")
    else:
        sure.append("it is the only LoRA config")
    return [("Recommendation", recommendation), ("How sure", "; ".join(sure) + "."),
            ("Whole sweep (context)", sweep)] + judge_lines(s, code=code)


def identity_note(scorecard: dict) -> str:
    """What identity was measured against, and what that means."""
    if scorecard.get("identity_against") == "held-out photos":
        return (f"identity is measured against held-out photos ({scorecard.get('holdout_dir')}), "
                "not the training photos; those serve memorisation only")
    return ("identity is measured against the training photos, which rewards copying them; "
            "give --holdout-reference DIR (photos not used in training) for an honest figure")


def judge_lines(scorecard: dict, *, code: str = "`") -> list[tuple[str, str]]:
    """(label, text) lines of the judge: over-training, copying, rigidity, baseline, identity."""
    judge = scorecard.get("judge")
    if not judge:
        return []
    memo, rigid = judge["memorisation"], judge["rigidity"]
    copying = (f"{memo['copies']} of {memo['images']} LoRA images ({_pct(memo['copy_rate'])}) "
               "copy a training photo")
    if memo.get("copied_photos"):
        copying += " (" + ", ".join(f"{code}{photo}{code} x{count}"
                                    for photo, count in memo["copied_photos"][:5]) + ")"
    if rigid.get("spread_ratio") is None:
        rigidity = "rigidity not measured (it needs 2+ faces per prompt and 2+ training faces)"
    else:
        rigidity = (f"spread across seeds {rigid['spread_ratio']:.2f} x the training photos' "
                    f"(rigid below {rigid.get('ratio_threshold', 0.35):.2f})")
        if rigid.get("rigid_configs"):
            rigidity += "; rigid: " + ", ".join(f"{code}{name}{code}"
                                                for name in rigid["rigid_configs"])
    parts = [copying, rigidity]
    baseline = judge.get("baseline")
    if baseline:
        below = baseline.get("below") or []
        parts.append(f"no-LoRA baseline identity {_f(baseline['similarity_mean'])}"
                     + (f"; not above it: " + ", ".join(f"{code}{name}{code}" for name in below)
                        if below else "; every LoRA config is above it"))
    return [("Over-training", judge["over_training"]["verdict"] + "."),
            ("Copying and rigidity", "; ".join(parts) + "."),
            ("Identity measured against", identity_note(scorecard) + ".")]


def comparison_lines(comparison: dict) -> list[str]:
    """The Markdown of a comparison: verdict, why, the like-with-like table, sweep deltas."""
    c = comparison
    lines = [f"Against `{c['lora_version']}` run `{c['run_id']}` ({c['timestamp']}): "
             f"**{c['verdict']}**" + (f": {c['why']}" if c.get("why") else "") + "."]
    if c.get("images_needed"):
        if c["verdict"] == "cannot decide":
            lines.append(f"Images needed: at least {c['images_needed']} more in the best config "
                         "of the smaller run.")
        else:
            lines.append(f"Images needed: about {c['images_needed']} per side (in the comparison "
                         "that needs the most) to tell the largest drop seen from noise.")
    lines.append(f"Best config: `{c.get('old_best_config')}` (grade "
                 f"{c.get('old_best_config_grade') or '-'}) then, `{c.get('new_best_config')}` "
                 f"(grade {c.get('new_best_config_grade') or '-'}) now; sweep grade "
                 f"{c['old_grade']} -> {c['new_grade']}.")
    if c.get("comparisons"):
        lines += ["", f"Like with like (95% bootstrap intervals of now - then; \"clearly\" needs "
                  f"the one-sided bound at family-wise {c['family_alpha']:.0%} over "
                  f"{c.get('family_size', 0)} tests and a change beyond "
                  f"{', '.join(f'{k} {v}' for k, v in (c.get('margins') or {}).items())}):",
                  "",
                  "| comparison | images then/now | metric | then | now | delta | 95% interval "
                  "| verdict |", "|---|---|---|---|---|---|---|---|"]
        for item in c["comparisons"]:
            counts = f"{item['images_old']}/{item['images_new']}"
            if item.get("undecided"):
                lines.append(f"| {item['label']} | {counts} | all | - | - | - | - "
                             f"| cannot decide: {item['undecided']} |")
                continue
            for name, entry in item["metrics"].items():
                verdict = entry.get("verdict", "-")
                if entry.get("undecided"):
                    verdict = f"cannot decide: {entry['undecided']}"
                elif entry.get("images_needed"):
                    verdict += f" (to be sure: ~{entry['images_needed']} images per side)"
                percent = name in ("pass_rate", "copying")
                show = _pct if percent else _f
                lines.append(f"| {item['label']} | {counts} | {entry['metric']} "
                             f"| {show(entry.get('old'))} | {show(entry.get('new'))} "
                             f"| {_signed(entry.get('delta'))} | {_range(entry.get('interval'))} "
                             f"| {verdict} |")
    lines += ["", "Whole sweep (context, not like with like when the configs differ):", "",
              "| metric | then | now | delta |", "|---|---|---|---|"]
    for metric in c["old"]:
        lines.append(f"| {metric} | {_f(c['old'].get(metric))} | "
                     f"{_f(c.get('now', {}).get(metric))} | {_signed(c['deltas'].get(metric))} |")
    for note in c.get("notes") or []:
        lines += ["", f"Note: {note}"]
    return lines


def render_report(scorecard: dict, comparison: dict | None, *, notes: str | None = None,
                  training_params=None) -> str:
    """The Markdown summary a person reads."""
    s = scorecard
    lines = [f"# Scorecard: {s['lora_version']} ({s['run_id']})", ""]
    for label, text in headline(s):
        lines += [f"**{label}:** {text}", ""]
    lines += [
        f"- Sweep grade: **{s['overall_grade']}** (score {_f(s['score'], 2)}; "
        "score = identity x (0.4 + 0.6 x realism relative to the training photos); "
        f"A >= 0.80, B >= 0.65, C >= 0.50, D >= 0.35) over {s['overall_grade_basis']}",
        f"- Identity: mean similarity {_f(s['face_similarity_mean'])} (failed images count 0; "
        f"{_f(s['face_similarity_mean_detected'])} over found faces) against threshold "
        f"{_f(s['threshold'])} and reference ceiling {_f(s['reference_ceiling'])}; "
        f"identity ratio {_f(s['identity_ratio'])}; "
        f"{'PASS' if s['face_similarity_pass'] else 'FAIL'}",
        f"- Skin realism: {_f(s['skin_realism_mean'])} (mean over images with a face, 0..1)",
        f"- Faces found: {_pct(s['detection_rate'])} of {s['images_evaluated']} images "
        f"(minimum {_pct(s['min_detection_rate'])}); failed images {s['images_failed']} "
        f"({s['images_unreadable']} unreadable); excluded copies of references "
        f"{s['images_excluded']}",
        f"- Scored by: {s['backend']} / {s['model']}; {s['timestamp']}",
        f"- Best config: `{s['best_config']}` (grade {s['best_config_grade']}); worst config: "
        f"`{s['worst_config']}`",
    ]
    if notes:
        lines.append(f"- Notes: {notes}")
    if training_params:
        params = json.dumps(training_params, ensure_ascii=False)[:400]
        lines.append(f"- Training params: `{params}`")
    lines += ["", "## Configs, ranked", "",
              "| # | config | grade | rests on | similarity | pass | realism "
              "| score (95% interval) |",
              "|---|---|---|---|---|---|---|---|"]
    for row in s["configs"]:
        name = f"`{row['config']}`" + (" (baseline)" if row["baseline"] else "")
        lines.append(
            f"| {row['rank']} | {name} | {row['grade']} | {row['grade_basis']} "
            f"| {_f(row['similarity_mean'])} | {_pct(row['pass_rate'])} "
            f"| {_f(row['realism_mean'])} "
            f"| {_f(row['score'], 2)} ({_range(row['score_interval'], lambda v: _f(v, 2))}) |")
    if len(s["configs"]) > 1:
        lines += ["", "By setting (numeric order): "
                  + ", ".join(f"`{name}`" for name in s["config_order"])]
    if s["failed_images"]:
        lines += ["", "## Failed images (each counts as 0 in its config and the sweep)", "",
                  "| image | config | reason |", "|---|---|---|"]
        lines += [f"| `{item['path']}` | `{item['config']}` | {item['reason']} |"
                  for item in s["failed_images"]]
    if s["excluded_images"]:
        lines += ["", "## Excluded: identical to a training photo", "",
                  "| image | config | identical to |", "|---|---|---|"]
        lines += [f"| `{item['path']}` | `{item['config']}` | `{item['identical_to_reference']}` |"
                  for item in s["excluded_images"]]
    lines += judge_markdown(s)
    lines += ["", "## Comparison with the previous version", ""]
    if comparison is None:
        lines.append("No earlier run of another version in the history.")
    elif comparison.get("refused"):
        lines.append(comparison["refused"])
    else:
        lines += comparison_lines({**comparison, "now": {m: s.get(m) for m in comparison["old"]}})
    lines += ["", "## Warnings", ""]
    lines += [f"- {message}" for message in s["warnings"]] or ["None."]
    lines.append("")
    return "\n".join(lines)


def _lift_text(row: dict) -> str:
    lift = row.get("baseline_lift")
    if not lift:
        return "-"
    return f"{lift['lift']:+.3f} ({_range(lift['interval'], lambda v: f'{v:+.3f}')})"


def _spread_text(row: dict) -> str:
    if row.get("spread_ratio") is None:
        return "-"
    return f"{row['spread_ratio']:.2f}" + (" RIGID" if row.get("rigid") else "")


def _yaw_text(pose: dict | None) -> str:
    if not pose or pose.get("yaw_mean") is None:
        return "-"
    return f"{pose['yaw_mean']:+.0f}\u00a0±\u00a0{pose['yaw_std']:.0f}"


def judge_markdown(scorecard: dict) -> list[str]:
    """The report's judge section: rules, the per-config table and the checkpoint table."""
    judge = scorecard.get("judge")
    if not judge:
        return []
    memo, rigid, pose = judge["memorisation"], judge["rigidity"], judge["pose"]
    lines = ["", "## The judge: over-training, copying, rigidity, pose", "",
             f"- Over-training: {judge['over_training']['verdict']}.",
             f"- Identity: {identity_note(scorecard)}.",
             f"- Copying: {memo.get('copies', 0)} of {memo.get('images', 0)} LoRA images "
             f"({_pct(memo.get('copy_rate'))}); rule: {memo.get('rule', '-')}; copy similarity "
             f"{_f(memo.get('copy_similarity'), 4)}, closest distinct training pair "
             f"{memo.get('closest_training_pair') or '-'}.",
             f"- Rigidity: per config and prompt across seeds, each face's mean identity "
             f"distance to the others, against the training photos' own "
             f"({_f(rigid.get('reference_spread'), 4)}); rigid below "
             f"{rigid.get('ratio_threshold', 0.35):.2f} x; LoRA images "
             f"{_f(rigid.get('spread_ratio'), 2)} x.",
             f"- Pose ({pose.get('convention') or 'not measured'}): "
             + (f"yaw {_yaw_text(pose)} over {pose['faces_with_pose']} faces (training photos "
                f"± {_f(rigid.get('reference_yaw_std'), 0)}); identity frontal (|yaw| < "
                f"{_f(pose.get('frontal_yaw'), 0)}) {_f(pose.get('frontal_similarity'))} over "
                f"{pose.get('frontal_faces')}, turned {_f(pose.get('turned_similarity'))} over "
                f"{pose.get('turned_faces')}, per 10 degrees of |yaw| "
                f"{_f(pose.get('similarity_per_10_degrees'))}"
                if pose.get("method") else f"not measured: {pose.get('unavailable')}") + ".",
             "", "| config | identity lift over baseline (95%) | copies | spread ratio | yaw "
             "| identity frontal / turned | flags |", "|---|---|---|---|---|---|---|"]
    for row in scorecard["configs"]:
        name = f"`{row['config']}`" + (" (baseline)" if row["baseline"] else "")
        rpose = row.get("pose") or {}
        lines.append(f"| {name} | {_lift_text(row)} | {row.get('copies', 0)}/{row['images']} "
                     f"| {_spread_text(row)} | {_yaw_text(rpose)} "
                     f"| {_f(rpose.get('frontal_similarity'))} / "
                     f"{_f(rpose.get('turned_similarity'))} "
                     f"| {'; '.join(row.get('flags') or []) or '-'} |")
    curves = judge.get("curves") or {}
    for entry in curves.get("series") or []:
        if len(entry["points"]) < 2:
            continue
        lines += ["", f"Checkpoint curve ({entry['words']}):", "",
                  f"| {curves['label']} | config | identity | realism | copy rate | spread ratio "
                  "| grade |", "|---|---|---|---|---|---|---|"]
        for point in entry["points"]:
            lines.append(f"| {format_number(point['x'])} | `{point['config']}` "
                         f"| {_f(point['identity'])} | {_f(point['realism'])} "
                         f"| {_pct(point['copy_rate'])} | {_f(point['spread_ratio'], 2)} "
                         f"| {point['grade']} |")
    return lines


# --------------------------------------------------------------------------- HTML

GRADE_COLORS = {"A": "#1a7f37", "B": "#4c9a2a", "C": "#b08800", "D": "#d4661b", "F": "#c0392b"}

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328;
 background:#f6f8fa}
h1{margin:0 0 4px;font-size:24px} h2{margin:28px 0 10px;font-size:19px} h3{margin:0;font-size:16px}
.sub{color:#57606a}
.verdict{display:flex;gap:18px;align-items:center;background:#fff;border:1px solid #d0d7de;
 border-radius:8px;padding:14px 18px;margin:14px 0}
.big{font-size:46px;font-weight:700;color:#fff;width:72px;height:72px;border-radius:10px;
 display:flex;align-items:center;justify-content:center;flex:none}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.stat{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:120px}
.stat b{display:block;font-size:18px}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de}
th,td{padding:5px 10px;border-bottom:1px solid #eaeef2;text-align:right}
th{background:#f0f3f6} td.l,th.l{text-align:left}
.g{display:inline-block;min-width:22px;text-align:center;border-radius:4px;color:#fff;
 font-weight:700}
.bar{display:inline-block;height:8px;background:#0969da;border-radius:4px;vertical-align:middle}
.grid td{text-align:center;vertical-align:top;padding:6px}
.grid img{display:block;margin:0 auto 4px;border-radius:4px}
.config{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 14px;margin:14px 0}
.sheet{display:flex;flex-wrap:wrap;gap:10px;margin-top:10px}
.card{width:164px;font-size:12px}
.card img,.noimg{width:160px;height:160px;object-fit:contain;background:#eaeef2;border-radius:4px;
 border:2px solid #d0d7de;display:block}
.card.ok img{border-color:#1a7f37} .card.bad img{border-color:#c0392b}
.card.noface img{border-color:#8c959f;opacity:.8}
.name{color:#57606a;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.ok-t{color:#1a7f37;font-weight:600} .bad-t{color:#c0392b;font-weight:600}
.hl{margin:3px 0}
ul.w{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:10px 28px}
.charts{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0}
.chart{background:#fff;border:1px solid #d0d7de;border-radius:6px}
.nochart{background:#fff;border:1px dashed #d0d7de;border-radius:6px;padding:12px;width:300px;
 color:#57606a}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:6px 0;font-size:12px}
.key svg{vertical-align:-1px}
.copy-t{color:#c0392b;font-weight:600}
"""


def thumbnail_data_uri(path: Path, load_image, size: int = THUMB_SIZE) -> str | None:
    """A base64 JPEG data URI of the image fitted in size x size, or None when it cannot be read
    (`load_image`: face_similarity_eval.load_image, BGR out, every refusal an exception)."""
    try:
        from PIL import Image
        rgb = load_image(path)[:, :, ::-1]
        image = Image.fromarray(np.ascontiguousarray(rgb))
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=82)
    except Exception:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _grade_badge(grade: str) -> str:
    return f'<span class="g" style="background:{GRADE_COLORS.get(grade, "#57606a")}">{grade}</span>'


def _short_name(path: str, config: str) -> str:
    """The file name without the config it repeats (`..._cfg4.0_seed42.png` -> `seed42.png`)."""
    name = PurePosixPath(path).name
    if config != UNPARSED and name.startswith(config) and len(name) > len(config) + 1:
        return name[len(config):].lstrip("_-. ")
    return name


def _anchor(config: str) -> str:
    return "cfg-" + re.sub(r"[^A-Za-z0-9_.-]", "-", config)


def strength_cfg_grids(configs: list[dict], schema) -> list[dict]:
    """Strength x CFG grids, one per combination of the other settings, each with >= 2 cells;
    rows, columns and grids in numeric order."""
    groups: dict[tuple, dict] = {}
    for row in configs:
        settings = dict(row["settings"])
        strength, cfg = settings.pop("strength", None), settings.pop("cfg", None)
        if strength is None or cfg is None or row["baseline"]:
            continue
        rest = schema.make(settings)
        group = groups.setdefault(schema.sort_key(rest), {"title": rest.name if rest.parsed
                                                          else "all", "cells": {}})
        cell = group["cells"].get((strength, cfg))
        if cell is None or row["score"] > cell["score"]:
            group["cells"][(strength, cfg)] = row
    grids = []
    for _, group in sorted(groups.items()):
        if len(group["cells"]) >= 2:
            group["strengths"] = sorted({key[0] for key in group["cells"]})
            group["cfgs"] = sorted({key[1] for key in group["cells"]})
            grids.append(group)
    return grids


# --------------------------------------------------------------------------- SVG charts
#
# Hand-written inline SVG (no script, no external reference): a chart is an <svg> with a
# white plot area, axis ticks, optional dashed guide lines, and one polyline and/or circles per
# series; every point carries a <title> (the browser shows it on hover).

PALETTE = ("#0969da", "#d4661b", "#1a7f37", "#8250df", "#c0392b", "#b08800", "#1b7c83",
           "#bf3989")
BASELINE_COLOR = "#8c959f"
REFERENCE_COLOR = "#1f2328"
CHART_SIZE = (318, 220)
CHART_MARGIN = (48, 12, 30, 38)  # left, right, top, bottom


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high] (1, 2, 2.5 or 5 x 10^k apart)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _tick_text(value: float, span: float) -> str:
    if span >= 20 or float(value).is_integer() and span >= 2:
        return f"{value:.0f}"
    digits = max(0, min(4, 2 - int(math.floor(math.log10(span))) if span > 0 else 2))
    return f"{value:.{digits}f}"


def svg_chart(title: str, series: list[dict], *, x_label: str, y_label: str,
              x_range=None, y_range=None, guides=(), lines: bool = True,
              size=CHART_SIZE, x_ticks=None) -> str:
    """One chart. `series`: {"label", "color", "points": [(x, y, tooltip)], "hollow": bool,
    "line": bool}; `guides`: ("x" or "y", value, colour, label) dashed lines; points whose x or
    y is None are left out (a polyline breaks there)."""
    e = html.escape
    width, height = size
    left, right, top, bottom = CHART_MARGIN
    xs = [p[0] for item in series for p in item["points"] if p[0] is not None and p[1] is not None]
    ys = [p[1] for item in series for p in item["points"] if p[0] is not None and p[1] is not None]
    ys += [value for axis, value, *_ in guides if axis == "y" and value is not None]
    xs += [value for axis, value, *_ in guides if axis == "x" and value is not None]
    x_low, x_high = x_range if x_range else ((min(xs), max(xs)) if xs else (0.0, 1.0))
    y_low, y_high = y_range if y_range else ((min(ys), max(ys)) if ys else (0.0, 1.0))
    if x_high <= x_low:
        x_low, x_high = x_low - 1.0, x_high + 1.0
    if y_high <= y_low:
        pad = abs(y_low) * 0.05 or 0.05
        y_low, y_high = y_low - pad, y_high + pad
    if not x_range:
        pad = (x_high - x_low) * 0.06
        x_low, x_high = x_low - pad, x_high + pad
    if not y_range:
        pad = (y_high - y_low) * 0.08
        y_low, y_high = y_low - pad, y_high + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    out = [f'<svg class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
           f"<title>{e(title)}</title>",
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
           'stroke="#d0d7de"/>',
           f'<text x="10" y="16" font-size="13" font-weight="600">{e(title)}</text>']
    y_ticks = [value for value in nice_ticks(y_low, y_high) if y_low <= value <= y_high]
    for value in y_ticks:
        y = py(value)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                   'stroke="#eaeef2"/>')
        out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#57606a">{_tick_text(value, y_high - y_low)}</text>')
    chosen_x = x_ticks if x_ticks is not None else nice_ticks(x_low, x_high)
    for value in chosen_x:
        if not x_low <= value <= x_high:
            continue
        x = px(value)
        out.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" '
                   'stroke="#57606a"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 15}" font-size="10" '
                   f'text-anchor="middle" fill="#57606a">'
                   f'{_tick_text(value, x_high - x_low)}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" font-size="11" '
               f'text-anchor="middle" fill="#57606a">{e(x_label)}</text>')
    out.append(f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="11" text-anchor="middle" '
               f'fill="#57606a" transform="rotate(-90 12 {top + plot_h / 2:.1f})">'
               f'{e(y_label)}</text>')
    for axis, value, color, label in guides:
        if value is None:
            continue
        if axis == "y" and y_low <= value <= y_high:
            y = py(value)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                       f'stroke="{color}" stroke-dasharray="5 4" stroke-width="1.5">'
                       f"<title>{e(label)}</title></line>")
            if label:
                out.append(f'<text x="{left + plot_w - 3}" y="{y - 4:.1f}" font-size="10" '
                           f'text-anchor="end" fill="{color}">{e(label)}</text>')
        elif axis == "x" and x_low <= value <= x_high:
            x = px(value)
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                       f'stroke="{color}" stroke-dasharray="5 4" stroke-width="1.5">'
                       f"<title>{e(label)}</title></line>")
            if label:
                out.append(f'<text x="{x + 3:.1f}" y="{top + 11}" font-size="10" '
                           f'fill="{color}">{e(label)}</text>')
    for item in series:
        color = item["color"]
        points = [(x, y, tip) for x, y, tip in item["points"]]
        if lines and item.get("line", True):
            run: list[str] = []
            for x, y, _ in points + [(None, None, None)]:
                if x is None or y is None:
                    if len(run) >= 2:
                        out.append(f'<polyline points="{" ".join(run)}" fill="none" '
                                   f'stroke="{color}" stroke-width="2"/>')
                    run = []
                    continue
                run.append(f"{px(x):.1f},{py(y):.1f}")
        radius = item.get("radius", 3.5)
        for x, y, tip in points:
            if x is None or y is None:
                continue
            fill = "#fff" if item.get("hollow") else color
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{radius}" fill="{fill}" '
                       f'stroke="{color}" stroke-width="1.5"><title>{e(str(tip))}</title>'
                       "</circle>")
    out.append("</svg>")
    return "".join(out)


def _legend(items: list[tuple[str, str, bool]]) -> str:
    """A legend row: (label, colour, hollow)."""
    e = html.escape
    cells = []
    for label, color, hollow in items:
        fill = "#fff" if hollow else color
        cells.append(f'<span class="key"><svg width="12" height="12"><circle cx="6" cy="6" '
                     f'r="4.5" fill="{fill}" stroke="{color}" stroke-width="1.5"/></svg> '
                     f"{e(label)}</span>")
    return f'<div class="legend">{"".join(cells)}</div>'


def config_colors(scorecard: dict) -> dict[str, str]:
    """A colour per LoRA config in settings order (cycled); baselines grey."""
    colors, index = {}, 0
    baseline = {row["config"] for row in scorecard["configs"] if row["baseline"]}
    for name in scorecard.get("config_order") or [row["config"] for row in scorecard["configs"]]:
        if name in baseline:
            colors[name] = BASELINE_COLOR
        else:
            colors[name] = PALETTE[index % len(PALETTE)]
            index += 1
    return colors


def curves_html(scorecard: dict) -> str:
    """Checkpoint curves: identity, realism, copy rate and rigidity against the checkpoint, one
    line per series (strength, CFG...), the baseline and the rigid bar as dashed lines, the
    over-training checkpoint as a red dashed line. Empty when there is no curve to draw."""
    judge = scorecard.get("judge") or {}
    curves = judge.get("curves") or {}
    series = [entry for entry in curves.get("series") or [] if len(entry["points"]) >= 2]
    e = html.escape
    if not series:
        verdict = (judge.get("over_training") or {}).get("verdict")
        if not judge:
            return ""
        return f"<h2>Checkpoint curves</h2><div class=\"sub\">{e(verdict or 'no curve')}</div>"
    label = curves["label"]
    over = judge.get("over_training") or {}
    x_ticks = sorted({point["x"] for entry in series for point in entry["points"]})
    if len(x_ticks) > 8:
        x_ticks = None
    colored = [(entry, PALETTE[index % len(PALETTE)]) for index, entry in enumerate(series)]
    marker = [("x", over.get("at"), "#c0392b", "over-training")] if over.get("found") else []
    baseline = (judge.get("baseline") or {}).get("similarity_mean")
    threshold = (judge.get("rigidity") or {}).get("ratio_threshold")
    charts = []
    for title, key, y_label, y_range, guides in (
            ("Identity (mean similarity)", "identity", "similarity", None,
             [("y", baseline, BASELINE_COLOR, "no-LoRA baseline")] if baseline is not None
             else []),
            ("Skin realism", "realism", "realism", None, []),
            ("Copy rate", "copy_rate", "share of images", (0.0, 1.0), []),
            ("Rigidity (spread vs training photos)", "spread_ratio", "spread ratio", None,
             [("y", threshold, "#c0392b", "rigid below")] if threshold else [])):
        lines = []
        for entry, color in colored:
            points = [(point["x"], point[key],
                       f"{point['config']}: {key.replace('_', ' ')} "
                       f"{_f(point[key], 3) if key != 'copy_rate' else _pct(point[key])} "
                       f"({point['images']} images)") for point in entry["points"]]
            lines.append({"label": entry["words"], "color": color, "points": points})
        if key == "spread_ratio" and all(p[1] is None for item in lines for p in item["points"]):
            charts.append(f'<div class="nochart">{e(title)}: not measured (it needs 2+ faces '
                          "per prompt and 2+ distinct training faces)</div>")
            continue
        charts.append(svg_chart(title, lines, x_label=label, y_label=y_label, y_range=y_range,
                                guides=guides + marker, x_ticks=x_ticks))
    legend = _legend([(entry["words"], color, False) for entry, color in colored])
    return (f"<h2>Checkpoint curves</h2><div class=\"sub\"><b>{e(over.get('verdict', ''))}"
            f"</b></div>{legend}<div class=\"charts\">{''.join(charts)}</div>")


def pose_and_map_html(scorecard: dict, details: dict) -> str:
    """Identity against yaw (generated faces, baseline grey, training/reference photos hollow)
    and the 2-D PCA map of reference and generated embeddings."""
    judge = scorecard.get("judge") or {}
    e = html.escape
    colors = config_colors(scorecard)
    images = [image for image in details["images"] if image.get("detected")]
    references = (details.get("references") or {}).get("per_reference") or []
    training = (details.get("training") or {}).get("per_photo") or []
    held_out = scorecard.get("identity_against") == "held-out photos"
    ref_label = "held-out photos" if held_out else "training photos"
    order = [name for name in (scorecard.get("config_order") or []) if name in colors]
    charts = []
    pose = judge.get("pose") or {}
    if pose.get("method"):
        groups = [{"label": name, "color": colors[name], "line": False,
                   "points": [(image.get("yaw"), image.get("similarity"),
                               f"{image['path']}: yaw {_f(image.get('yaw'), 0)}, similarity "
                               f"{_f(image.get('similarity'))}")
                              for image in images if image["config"] == name]}
                  for name in order]
        groups.append({"label": ref_label, "color": REFERENCE_COLOR, "hollow": True,
                       "line": False,
                       "points": [(ref.get("yaw"), ref.get("loo_similarity"),
                                   f"{ref['path']} (leave-one-out similarity)")
                                  for ref in references]})
        threshold = scorecard.get("threshold")
        charts.append(svg_chart("Identity vs yaw", groups, x_label="yaw (degrees; > 0: turned "
                                "to the subject's left)", y_label="similarity", lines=False,
                                guides=[("y", threshold, "#c0392b", "threshold"),
                                        ("x", 0.0, "#afb8c1", "")],
                                size=(440, 260)))
    else:
        charts.append(f'<div class="nochart">Identity vs yaw: pose not measured '
                      f"({e(str(pose.get('unavailable') or 'no landmark model'))})</div>")
    mapped = [{"label": name, "color": colors[name], "line": False,
               "points": [(image["map"][0], image["map"][1], image["path"])
                          for image in images if image["config"] == name and image.get("map")]}
              for name in order]
    mapped.append({"label": ref_label, "color": REFERENCE_COLOR, "hollow": True, "line": False,
                   "radius": 4.5,
                   "points": [(ref["map"][0], ref["map"][1], ref["path"])
                              for ref in references if ref.get("map")]})
    if training:
        mapped.append({"label": "training photos", "color": "#57606a", "hollow": True,
                       "line": False, "radius": 4.5,
                       "points": [(photo["map"][0], photo["map"][1], photo["path"])
                                  for photo in training if photo.get("map")]})
    if sum(len(item["points"]) for item in mapped) >= 2:
        charts.append(svg_chart("Identity map (PCA of face embeddings)", mapped,
                                x_label="first principal component",
                                y_label="second component", lines=False, size=(440, 260)))
    legend = [(name, colors[name], False) for name in order]
    legend.append((ref_label, REFERENCE_COLOR, True))
    if training:
        legend.append(("training photos", "#57606a", True))
    return (f"<h2>Pose and identity map</h2>{_legend(legend)}"
            f"<div class=\"charts\">{''.join(charts)}</div>")


def judge_table_html(scorecard: dict) -> str:
    """Per config: identity lift over the baseline, copies, spread, pose and the flags."""
    judge = scorecard.get("judge")
    if not judge:
        return ""
    e = html.escape
    out = ["<h2>Copying, rigidity, pose, baseline</h2>",
           f"<div class=\"sub\">{e(identity_note(scorecard))}. Copy rule: "
           f"{e(str(judge['memorisation'].get('rule', '-')))}. Rigidity: each face's mean "
           "identity distance to the other seeds of its config and prompt, against the "
           "training photos' own.</div>",
           "<table><tr><th class=\"l\">config</th><th>identity lift over baseline (95%)</th>"
           "<th>copies</th><th>spread ratio</th><th>yaw</th><th>identity frontal / turned</th>"
           "<th class=\"l\">flags</th></tr>"]
    for row in scorecard["configs"]:
        rpose = row.get("pose") or {}
        flags = "; ".join(row.get("flags") or []) or "-"
        extra = " <span class=\"sub\">(baseline)</span>" if row["baseline"] else ""
        out.append(f"<tr><td class=\"l\">{e(row['config'])}{extra}</td>"
                   f"<td>{e(_lift_text(row))}</td><td>{row.get('copies', 0)}/{row['images']}</td>"
                   f"<td>{e(_spread_text(row))}</td><td>{e(_yaw_text(rpose))}</td>"
                   f"<td>{_f(rpose.get('frontal_similarity'))} / "
                   f"{_f(rpose.get('turned_similarity'))}</td>"
                   f"<td class=\"l{' bad-t' if row.get('flags') else ''}\">{e(flags)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def render_html(scorecard: dict, details: dict, comparison: dict | None, generated_dir: Path, *,
                schema, load_image, notes: str | None = None) -> str:
    """A self-contained page: the recommendation, ranked configs, strength x CFG grids, contact
    sheets, failed and excluded images."""
    s = scorecard
    e = html.escape
    thumbs = {image["path"]: thumbnail_data_uri(generated_dir / image["path"], load_image)
              for image in details["images"] if not image.get("error")}
    by_config: dict[str, list[dict]] = {}
    for image in details["images"]:
        by_config.setdefault(image["config"], []).append(image)
    best = s.get("recommendation")
    badge = best["grade"] if best else s["overall_grade"]
    out = ["<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Scorecard {e(str(s['lora_version']))} - best config grade {badge}</title>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>LoRA scorecard: {e(str(s['lora_version']))}</h1>",
           f"<div class=\"sub\">run <code>{e(s['run_id'])}</code> · {e(s['timestamp'])} · "
           f"{e(str(s['backend']))} / {e(str(s['model']))} · {s['images_evaluated']} images · "
           f"{e(s['generated_dir'])}</div>",
           f"<div class=\"verdict\"><div class=\"big\" style=\"background:{GRADE_COLORS[badge]}\">"
           f"{badge}</div><div>"]
    for label, text in headline(s, code=""):
        out.append(f"<div class=\"hl\"><b>{e(label)}:</b> {e(text)}</div>")
    if comparison and not comparison.get("refused"):
        out.append(f"<div class=\"hl\"><b>Against {e(str(comparison['lora_version']))}</b> "
                   f"(<code>{e(str(comparison['run_id']))}</code>): "
                   f"<b>{e(comparison['verdict'])}</b>"
                   + (f": {e(str(comparison['why']))}" if comparison.get("why") else "")
                   + "</div>")
    if notes:
        out.append(f"<div class=\"sub\">Notes: {e(notes)}</div>")
    out.append("</div></div><div class=\"stats\">")
    for label, value in (
        ("best config grade", f"{s['best_config_grade'] or '-'}"),
        ("sweep grade (context)", s["overall_grade"]),
        ("identity (mean sim.)", _f(s["face_similarity_mean"])),
        ("threshold", _f(s["threshold"])),
        ("reference ceiling", _f(s["reference_ceiling"])),
        ("skin realism", _f(s["skin_realism_mean"])),
        ("faces found", _pct(s["detection_rate"])),
        ("failed images", str(s["images_failed"])),
        ("copy rate", _pct(s.get("copy_rate"))),
        ("spread vs training", _f(s.get("spread_ratio"), 2)),
        ("over-training from", "-" if s.get("over_training_from") is None
         else format_number(s["over_training_from"])),
    ):
        out.append(f"<div class=\"stat\">{e(label)}<b>{e(value)}</b></div>")
    out.append("</div>")
    out.append(curves_html(s))
    out.append(pose_and_map_html(s, details))
    out.append(judge_table_html(s))
    out.append("<h2>Configs, ranked</h2><table><tr><th>#</th><th class=\"l\">config</th>"
               "<th>grade</th><th class=\"l\">rests on</th><th>similarity</th><th>pass</th>"
               "<th>realism</th><th class=\"l\">score (95% interval)</th></tr>")
    for row in s["configs"]:
        width = int(round(100 * row["score"]))
        extra = " <span class=\"sub\">(baseline)</span>" if row["baseline"] else ""
        out.append(
            f"<tr><td>{row['rank']}</td><td class=\"l\"><a href=\"#{_anchor(row['config'])}\">"
            f"{e(row['config'])}</a>{extra}</td><td>{_grade_badge(row['grade'])}</td>"
            f"<td class=\"l\">{e(row['grade_basis'])}</td>"
            f"<td>{_f(row['similarity_mean'])}</td><td>{_pct(row['pass_rate'])}</td>"
            f"<td>{_f(row['realism_mean'])}</td><td class=\"l\"><span class=\"bar\" "
            f"style=\"width:{width}px\"></span> {row['score']:.2f} "
            f"<span class=\"sub\">({_range(row['score_interval'], lambda v: _f(v, 2))})</span>"
            "</td></tr>")
    out.append("</table>")
    strength_axis, cfg_axis = schema.by_key.get("strength"), schema.by_key.get("cfg")
    for grid in strength_cfg_grids(s["configs"], schema):
        out.append(f"<h2>Strength x CFG ({e(grid['title'])})</h2>"
                   "<table class=\"grid\"><tr><th></th>")
        for cfg in grid["cfgs"]:
            out.append(f"<th>cfg{e(format_number(cfg, cfg_axis.decimals))}</th>")
        out.append("</tr>")
        for strength in grid["strengths"]:
            out.append(f"<tr><th>str{e(format_number(strength, strength_axis.decimals))}</th>")
            for cfg in grid["cfgs"]:
                row = grid["cells"].get((strength, cfg))
                if row is None:
                    out.append("<td class=\"sub\">-</td>")
                    continue
                best_image = max((image for image in by_config.get(row["config"], [])
                                  if not image.get("error")), default=None,
                                 key=lambda image: (image["identity"], image["realism"] or 0.0))
                thumb = thumbs.get(best_image["path"]) if best_image else None
                image_html = f"<img src=\"{thumb}\" width=\"120\" alt=\"\">" if thumb else ""
                out.append(f"<td><a href=\"#{_anchor(row['config'])}\">{image_html}</a>"
                           f"{_grade_badge(row['grade'])} {row['score']:.2f}<br>"
                           f"<span class=\"sub\">id {_f(row['similarity_mean'])} · "
                           f"real {_f(row['realism_mean'], 2)} · {row['images']} img</span></td>")
            out.append("</tr>")
        out.append("</table>")
    out.append("<h2>Contact sheets</h2><div class=\"sub\">Border: green = identity at or above "
               f"the threshold ({_f(s['threshold'])}), red = below, grey = no face found or "
               "unreadable (both count as failed). Best identity first.</div>")
    threshold = s["threshold"]
    for row in s["configs"]:
        out.append(f"<div class=\"config\" id=\"{_anchor(row['config'])}\"><h3>#{row['rank']} "
                   f"{e(row['config'])} {_grade_badge(row['grade'])}</h3><div class=\"sub\">score "
                   f"{row['score']:.2f} · similarity {_f(row['similarity_mean'])} · realism "
                   f"{_f(row['realism_mean'])} · {e(row['grade_basis'])}</div>"
                   "<div class=\"sheet\">")
        members = sorted(by_config.get(row["config"], []),
                         key=lambda image: (-image["identity"], image["path"]))
        for image in members:
            if image.get("error"):
                state = "noface"
                identity = f"<span class=\"bad-t\">unreadable: {e(str(image['error']))}</span>"
            elif not image["detected"]:
                state, identity = "noface", "<span class=\"bad-t\">no face found</span>"
            else:
                passed = image["similarity"] is not None and image["similarity"] >= threshold
                state = "ok" if passed else "bad"
                identity = (f"identity <span class=\"{'ok-t' if passed else 'bad-t'}\">"
                            f"{_f(image['similarity'])}</span>")
            thumb = thumbs.get(image["path"])
            picture = (f"<img src=\"{thumb}\" alt=\"{e(image['path'])}\">" if thumb
                       else "<div class=\"noimg\"></div>")
            judged = ""
            if image.get("copy"):
                judged += (f"<div class=\"copy-t\">copy of {e(str(image.get('copy_of')))}"
                           "</div>")
            if image.get("yaw") is not None:
                judged += f"<div class=\"sub\">yaw {image['yaw']:+.0f}</div>"
            out.append(f"<div class=\"card {state}\" title=\"{e(image['path'])}\">{picture}"
                       f"<div class=\"name\">{e(_short_name(image['path'], row['config']))}</div>"
                       f"<div>{identity}</div>{judged}"
                       f"<div>realism {_f(image['realism'] if image['detected'] else None, 2)}"
                       "</div></div>")
        out.append("</div></div>")
    if s["excluded_images"]:
        out.append("<h2>Excluded: identical to a training photo</h2><ul class=\"w\">")
        out += [f"<li>{e(item['path'])} = {e(str(item['identical_to_reference']))}</li>"
                for item in s["excluded_images"]]
        out.append("</ul>")
    if s["warnings"]:
        out.append("<h2>Warnings</h2><ul class=\"w\">")
        out += [f"<li>{e(message)}</li>" for message in s["warnings"]]
        out.append("</ul>")
    out.append("<p class=\"sub\">score = identity x (0.4 + 0.6 x relative realism); identity "
               "is 0.5 at the threshold, 1 at the reference ceiling, 0 without a face or when "
               "unreadable; grade A &ge; 0.80, B &ge; 0.65, C &ge; 0.50, D &ge; 0.35; capped at C "
               "when mean similarity is below the threshold, at D when too few faces are found. "
               "Intervals: 95% percentile bootstrap over each config's images.</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


