"""The conversion report as text: what `cassava convert` prints (conversion-report.json holds the same, in full)."""
from __future__ import annotations

from cassava.shared.formatting import size_text
from cassava.shared.spec import STANDIN_NOTE, TFLITE_FILE

from .verify import agreement_text


def _size(n) -> str:
    return size_text(n, kb_digits=1, mb_digits=1)


def _op_counts(ops) -> str:
    counts = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(counts.items()))


def _short(layer: str) -> str:
    """TFLite names a fused layer by every op folded into it, separated by ';': the first says which it is."""
    return layer.split(";")[0]


def selective_rows(sel: dict) -> list:
    cost = sel["cost"]
    kept = sel["kept_in_float32"]
    chosen = f"{sel['chosen']}: " + ("target met" if sel["met"] else "TARGET MISSED, best found kept")
    rows = [("target", f"top-1 agreement >= {sel['target']:.1%} on the held-out images; {chosen} "
                       f"({len(sel['trials'])} variants tried)")]
    if sel["quantize"] == "int8":
        rows.append(("kept in float32", f"{len(kept)} layer(s): " + "; ".join(_short(n) for n in kept) if kept
                     else "nothing (plain int8 meets the target)"))
    ms = cost["ms_per_image"]
    rows.append(("cost", f"{_size(cost['bytes'])} vs plain int8 {_size(cost['int8_bytes'])} and float32 "
                         f"{_size(cost['float32_bytes'])} ({cost['bytes'] / cost['float32_bytes']:.2f}x float32); "
                         f"{ms['chosen']:.2f} ms/image vs int8 {ms['int8']:.2f}, float32 {ms['float32']:.2f} "
                         "(1 thread, median, this machine)"))
    return rows


def weighed_rows(w: dict) -> list:
    """The default int8 search: each candidate's sent share at its own threshold, bound, size and time."""
    budget = w["budget"]
    rows = [("default copy", f"{w['chosen']}: {w['objective']}, within {budget['max_latency_ratio']:g}x plain int8 "
                             f"latency and {_size(budget['max_bytes'])} (--plain: plain int8)")]
    plain_ms = w["candidates"][0]["ms_per_image"]
    for c in w["candidates"]:
        bound = f", bound >= {c['bound']:.1%}" if c.get("bound") is not None else ""
        mark = "CHOSEN" if c["name"] == w["chosen"] else ("" if c["within_budget"] else "over budget")
        sends = f"{c['escalated']}/{c['images']} ({c['fraction_escalated']:.1%})"
        rows.append(("  candidate", f"{c['name']}: sends {sends} at < {c['threshold']:.4g}, alone "
                                    f"{c['agree']}/{c['images']}{bound}; "
                                    f"{_size(c['bytes'])}, {c['ms_per_image']:.2f} ms "
                                    f"({c['ms_per_image'] / plain_ms:.2f}x)  {mark}".rstrip()))
    return rows


def escalation_text(e: dict) -> str:
    """'top probability < 0.5391: 13/150 escalated (8.7%) -> agreement 100.0% (alone 94.0%), target 99.5%'."""
    score = {"top": "top probability"}.get(e["score"], e["score"])
    return (f"{score} < {e['threshold']:.4g}: {e['escalated']}/{e['images']} held-out images "
            f"escalated ({e['fraction_escalated']:.1%}) -> agreement {e['agreement']:.1%} (alone "
            f"{e['edge_alone_agreement']:.1%}), target {e['target']:.1%}")


def margin_text(e: dict) -> str:
    """'with 95 % confidence, agreement on the photos the edge keeps is >= 97.9 % (N = 137 kept of 150)'."""
    m = e.get("margin")
    if not m or m.get("lower") is None:
        return "no bound: the edge keeps no held-out image at this threshold"
    verdict = ("reaches the target" if m["certified"] else
               f"below the {e['target']:.1%} target: too few held-out images to prove it")
    return (f"with {m['confidence']:.0%} confidence, agreement on the photos the edge keeps is >= {m['lower']:.1%} "
            f"(N = {m['kept']} kept of {e['images']}, {m['kept_agreed']} agreeing; {verdict}; point-estimate "
            f"threshold {m['point_threshold']:.4g})")


def table(report: dict) -> str:
    v, s, io = report["verification"], report["sizes"], report["io"]
    input_scale = (f" (input scale {io['input']['scale']:.6g}, zero point {io['input']['zero_point']})"
                   if io['input']['scale'] else "")
    rows = [
        ("quantize", f"{report['quantize']}, I/O {io['input']['dtype']} -> {io['output']['dtype']}" + input_scale),
        ("calibration", f"{report['calibration']['images']} images from {report['calibration']['data']}"
                        if report["calibration"] else "none (not int8)"),
    ]
    if report["data"].get("split"):
        rows.append(("split", report["data"]["split"]))
    rows.append(("verified on", f"{v['images']} held-out images from {report['data']['verification']}" if v
                 else "not verified"))
    if v:
        verdict = "OK" if report["accepted"] else "REFUSED"
        rows.append(("top-1 agreement", f"{agreement_text(v)}  minimum {report['min_agreement']:.1%}  {verdict}"))
        rows.append(("|Δ probability|", f"max {v['max_abs_diff']:.4f}, mean {v['mean_abs_diff']:.4f}"
                     if v["max_abs_diff"] is not None
                     else f"NaN or infinite output on {v['non_finite_outputs']} images"))
        if v.get("labelled"):
            caveat = (f"  ({STANDIN_NOTE})" if report["standin"] else
                      f"  (N={v['labelled']}: too few to quote as accuracy)" if v["labelled"] < 100 else "")
            rows.append(("top-1 vs labels",
                         f"source {v['source_right']}/{v['labelled']}, TFLite {v['tflite_right']}/{v['labelled']}"
                         + caveat))
    if report.get("escalation"):
        rows.append(("escalate below", escalation_text(report["escalation"])))
        rows.append(("margin", margin_text(report["escalation"])))
    if report.get("selective"):
        rows += selective_rows(report["selective"])
    if report.get("escalation_search"):
        rows += weighed_rows(report["escalation_search"])
    ratio = s['tflite_bytes'] / max(1, s['source_variables_bytes'])
    rows.append(("size", f"source variables {_size(s['source_variables_bytes'])} "
                         f"(SavedModel {_size(s['source_saved_model_bytes'])}) "
                         f"-> {TFLITE_FILE} {_size(s['tflite_bytes'])} ({ratio:.2f}x variables)"))
    rows.append(("ops", _op_counts(report["ops"])))
    if report["float_ops"] and report["quantize"] == "int8":
        rows.append(("float32 ops", ", ".join(report["float_ops"])))
    rows.append(("interpreter", report["interpreter"]))
    head = f"cassava convert: {report['description']} -> {report['out']}"
    return "\n".join([head] + [f"  {name:<16} {text}" for name, text in rows])
