"""The drag canvas's server side: the page's JSON read into transform pairs, bad input in one line; the
advice on live mode."""
import argparse
import json

import numpy as np
import pytest

from regiondrag.apps.canvas import LIVE_MAX_S, EditTimes, canvas_pairs, live_advice, read_request, result_message
from regiondrag.regions import RegionError

SIZE = (120, 80)
SQUARE = [[10, 10], [40, 10], [40, 30], [10, 30]]


def request(*regions):
    return {"tab": "t", "seq": 3, "regions": list(regions)}


def test_a_dragged_region_is_its_filled_outline_and_its_matrix():
    (pair,) = canvas_pairs(request({"outline": SQUARE, "matrix": [[1, 0, 20], [0, 1, 5], [0, 0, 1]]}), SIZE)
    assert pair.kind == "transform" and pair.handle.shape == (80, 120)
    assert pair.handle.sum() == 31 * 21 and pair.handle[10:31, 10:41].all()  # edges included, as fillPoly
    assert np.array_equal(pair.matrix, [[1, 0, 20], [0, 1, 5], [0, 0, 1]])


def test_a_brushed_region_is_its_run_length_mask():
    runs = [10 * 120 + 5, 3, 117, 4, 80 * 120 - (10 * 120 + 5 + 3 + 117 + 4)]  # 3 pixels on row 10, 4 on row 11
    (pair,) = canvas_pairs(request({"mask": runs, "matrix": [[1, 0, 20], [0, 1, 5], [0, 0, 1]]}), SIZE)
    ys, xs = np.nonzero(pair.handle)
    assert list(zip(ys, xs)) == [(10, 5), (10, 6), (10, 7), (11, 5), (11, 6), (11, 7), (11, 8)]


@pytest.mark.parametrize("region, fragment", [
    ({"outline": SQUARE[:2], "matrix": [[1, 0, 0], [0, 1, 0]]}, "3 to"),
    ({"outline": SQUARE}, "malformed"),
    ({"outline": "x", "matrix": [[1, 0, 0], [0, 1, 0]]}, "malformed"),
    ({"outline": SQUARE, "matrix": [[0, 0, 0], [0, 0, 0]]}, "singular"),
    ({"outline": SQUARE, "matrix": [[1, 0, 500], [0, 1, 0]]}, "entirely off"),
    ({"mask": [120 * 80 - 1], "matrix": [[1, 0, 0], [0, 1, 0]]}, "add up to the 120x80 photo's 9600 pixels"),
    ({"mask": [9000, -10, 610], "matrix": [[1, 0, 0], [0, 1, 0]]}, "whole numbers >= 0"),
    ({"mask": [9000.5, 599.5], "matrix": [[1, 0, 0], [0, 1, 0]]}, "run lengths"),
    ({"mask": [9600], "matrix": [[1, 0, 0], [0, 1, 0]]}, "empty"),
])
def test_a_bad_region_is_refused_in_one_line_naming_it(region, fragment):
    with pytest.raises(RegionError, match=fragment) as e:
        canvas_pairs(request({"outline": SQUARE, "matrix": [[1, 0, 1], [0, 1, 1]]}, region), SIZE)
    assert str(e.value).startswith("dragged region 2: ") and "\n" not in str(e.value)


def test_only_the_pages_requests_are_requests():
    assert read_request(json.dumps(request())) == request()
    reply = result_message(request(), None, "m", live_advice(None))
    for other in ("", None, "not json", json.dumps({"photo": "data:"}), reply):
        assert read_request(other) == {}


def test_live_mode_is_advised_only_where_re_edits_were_timed_fast():
    times = EditTimes()
    assert times.typical() is None
    advice = live_advice(times.typical())
    assert not advice["live"] and "no re-edit timed yet" in advice["why"]
    for seconds in (0.1, 0.1, 9.0):  # one slow outlier (a first edit at a new size) does not turn it off
        times.add(seconds)
    assert times.typical() == 0.1 and live_advice(times.typical()) == {
        "live": True, "why": f"re-edits take 0.10 s here; live mode needs under {LIVE_MAX_S:g} s"}
    for seconds in (40.0, 41.0, 39.0):  # SD1.5 on a CPU
        times.add(seconds)
    advice = live_advice(times.typical())
    assert not advice["live"] and "re-edits take 39.00 s here" in advice["why"]
    assert live_advice(0.3, max_s=0.5)["live"] and not live_advice(LIVE_MAX_S)["live"]


def test_the_ui_command_says_the_live_threshold_and_refuses_a_bad_one(capsys):
    from regiondrag.apps.cli import build_parser, main

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    ui_help = " ".join(commands["ui"].format_help().split())  # help wraps lines
    assert f"regiondrag/apps/canvas.py, {LIVE_MAX_S:g})" in ui_help
    for bad in ("0", "-1", "inf", "nan"):
        assert main(["ui", "--live-max-s", bad]) != 0
        assert "--live-max-s" in capsys.readouterr().err
