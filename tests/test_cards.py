"""`greengate-provision cards`: the PDF is printed (rendered at 300 dpi) and read back.

The codes must decode to their payloads with the kiosk's own decoders, measure
5 cm (cards) and 15 cm (posters) on the page, sit inside their cut marks with a
white quiet zone, and carry the holder's or place's name as real text.
"""

import io
import json
import sys
import unicodedata
from datetime import datetime, timezone

import numpy as np
import pypdfium2 as pdfium
import pytest
import segno

from device.decoders import PyzbarDecoder, ZxingDecoder
from provisioning import cards as cardmod
from provisioning import cli

UTC = timezone.utc
ISSUED = datetime(2021, 6, 1, tzinfo=UTC)
EXPIRES = datetime(2022, 6, 1, tzinfo=UTC)
DPI = 300
PX = 25.4 / DPI  # mm per pixel

HOLDERS = [("Nguyễn Thị", "Hồng Nhung"), ("Trần", "Văn Đức"), ("Lê Thị", "Ánh Tuyết"),
           ("Phạm", "Quốc Bảo"), ("Hoàng Thị", "Thu Hương"), ("Võ", "Minh Khôi"),
           ("Đặng Ngọc", "Yến Nhi"), ("Bùi", "Xuân Trường"), ("Dương", "Thị Mỹ Lệ")]
PLACES = [
    {"name": "Co.op Mart Phú Mỹ Hưng", "code": "q7-coopmart-pmh", "district": "Quận 7"},
    {"name": "Chợ Đồng Xuân", "code": "hk-cho-dong-xuan", "district": "Quận Hoàn Kiếm",
     "payload": "https://qr.example/location/hk-cho-dong-xuan"},
]


def provision(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["cards", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def render(pdf_path):
    """[(grey page at DPI, page text, PdfTextPage)] for each page."""
    doc = pdfium.PdfDocument(str(pdf_path))
    pages = []
    for page in doc:
        bitmap = page.render(scale=DPI / 72, grayscale=True).to_numpy()
        gray = bitmap if bitmap.ndim == 2 else bitmap[:, :, 0]
        text = page.get_textpage()
        pages.append((np.ascontiguousarray(gray), text.get_text_range(), text))
    return pages


def codes(gray):
    """{text: (x0, y0, x1, y1) of the dark modules, in pixels} for each QR code on the page.

    zxing-cpp finds the codes; the size is measured from the pixels themselves: the
    box of dark pixels within 2 mm of what zxing reports."""
    import zxingcpp
    found = {}
    for barcode in zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.QRCode):
        p = barcode.position
        xs = [p.top_left.x, p.top_right.x, p.bottom_left.x, p.bottom_right.x]
        ys = [p.top_left.y, p.top_right.y, p.bottom_left.y, p.bottom_right.y]
        pad = round(2 / PX)
        x0, y0 = max(min(xs) - pad, 0), max(min(ys) - pad, 0)
        x1, y1 = max(xs) + pad, max(ys) + pad
        dark_y, dark_x = np.nonzero(gray[y0:y1, x0:x1] < 128)
        found[barcode.text] = (x0 + dark_x.min(), y0 + dark_y.min(),
                               x0 + dark_x.max() + 1, y0 + dark_y.max() + 1)
    return found


def mm(px):
    return px * PX


def px(value_mm):
    return round(value_mm / PX)


@pytest.fixture(scope="module")
def minted(es256):
    """(family, given, HC1 payload) for each holder: real certificates from the test issuer."""
    return [(family, given, es256.mint(es256.vaccination(date="2021-08-01", family=family,
                                                         given=given),
                                       iat=ISSUED, exp=EXPIRES))
            for family, given in HOLDERS]


@pytest.fixture(scope="module")
def printed(minted, tmp_path_factory):
    """One run: 9 cards (two A4 pages: 8 + 1), then 2 posters."""
    d = tmp_path_factory.mktemp("cards")
    rows = [{"name": f"{family} {given}", "payload": payload} for family, given, payload in minted]
    holders = jsonl(d / "holders.jsonl", rows)
    places = jsonl(d / "places.jsonl", PLACES)
    out = d / "cards.pdf"
    code = cli.main(["cards", "--cards", str(holders), "--posters", str(places),
                           "--out", str(out)])
    assert code == 0
    return {"rows": rows, "pages": render(out), "out": out,
            "layout": cardmod.card_layout(cardmod.load_cards(str(holders)))}


# --- personal cards ------------------------------------------------------------------------

def test_cards_fill_a4_pages_then_posters_follow(printed):
    assert len(printed["layout"].slots) == 8  # 2 columns x 4 rows on A4
    assert len(printed["pages"]) == 2 + 2
    first, second, poster1, poster2 = (codes(gray) for gray, _, _ in printed["pages"])
    payloads = [r["payload"] for r in printed["rows"]]
    assert set(first) == set(payloads[:8])
    assert set(second) == {payloads[8]}
    assert set(poster1) == {"greengate:location:q7-coopmart-pmh"}
    assert set(poster2) == {PLACES[1]["payload"]}


def test_card_codes_decode_with_both_kiosk_decoders(printed):
    gray = printed["pages"][0][0]
    payloads = {r["payload"] for r in printed["rows"][:8]}
    assert set(ZxingDecoder().decode(gray)) == payloads
    # ZBar: one card at a time, as a kiosk camera sees it
    layout = printed["layout"]
    zbar = PyzbarDecoder()
    for (x, y), row in zip(layout.slots, printed["rows"]):
        card = gray[px(y):px(y + layout.height), px(x):px(x + layout.width)]
        assert zbar.decode(card) == [row["payload"]]


def test_card_code_is_printed_5_by_5_cm_with_a_quiet_zone_inside_the_card(printed):
    gray = printed["pages"][0][0]
    layout = printed["layout"]
    found = codes(gray)
    for (x, y), row in zip(layout.slots, printed["rows"]):
        x0, y0, x1, y1 = found[row["payload"]]
        assert mm(x1 - x0) == pytest.approx(50, abs=1)
        assert mm(y1 - y0) == pytest.approx(50, abs=1)
        modules = segno.make(row["payload"], error="q", micro=False).symbol_size(border=0)[0]
        module = 50 / modules
        assert module >= 0.5  # an ES256 HC1 code: ~0.56 mm, twice what cameras need
        # four white modules all round, and all of it inside the card (the cut marks)
        q = px(4 * module)
        ring = gray[y0 - q:y1 + q, x0 - q:x1 + q].copy()
        ring[q - 1:-q + 1, q - 1:-q + 1] = 255  # the code, and its anti-aliased edge
        assert ring.min() > 200
        assert px(x) <= x0 - q and x1 + q <= px(x + layout.width)
        assert px(y) <= y0 - q and y1 + q <= px(y + layout.height)


def test_cut_marks_at_every_card_corner_outside_the_card(printed):
    gray = printed["pages"][0][0]
    layout = printed["layout"]
    gap, length = cardmod.MARK_GAP, cardmod.MARK_LENGTH

    def dark(xmm, ymm):
        r = 2
        patch = gray[px(ymm) - r:px(ymm) + r + 1, px(xmm) - r:px(xmm) + r + 1]
        return patch.min() < 100

    for x, y in layout.slots:
        for cx, sx in ((x, -1), (x + layout.width, 1)):
            for cy, sy in ((y, -1), (y + layout.height, 1)):
                mid = gap + length / 2
                assert dark(cx + sx * mid, cy), (x, y, cx, cy)  # horizontal mark
                assert dark(cx, cy + sy * mid), (x, y, cx, cy)  # vertical mark
                # outside the card: the corner itself and the card's own corner are blank
                assert not dark(cx, cy)
                assert not dark(cx - sx * 2, cy - sy * 2)
                assert not dark(cx + sx * (gap + length + 0.5), cy)  # the mark ends


def test_names_print_beside_their_codes_with_diacritics(printed):
    gray, text, textpage = printed["pages"][0]
    flat = " ".join(text.split())
    for row in printed["rows"][:8]:
        assert row["name"] in flat
    assert "Nguyễn Thị Hồng Nhung" in flat
    assert " ".join(printed["pages"][1][1].split()) == "Dương Thị Mỹ Lệ"
    # the first name's first letter sits right of its code, within the code's height
    x0, y0, x1, y1 = codes(gray)[printed["rows"][0]["payload"]]
    left, bottom, right, top = textpage.get_charbox(text.index("N"))
    page_h = gray.shape[0]
    char_x, char_top = left * DPI / 72, page_h - top * DPI / 72
    assert x1 + px(3) < char_x < x1 + px(10)
    assert y0 < char_top < y1


def test_name_is_read_from_the_certificate_and_bare_hc1_lines_work(capsys, monkeypatch, minted,
                                                                   tmp_path):
    # `greengate-provision issuer mint` prints bare HC1 lines: pipe them straight in
    stdin = "".join(payload + "\n" for _, _, payload in minted[:2])
    out = tmp_path / "c.pdf"
    code, stdout, err = provision(capsys, "--cards", "-", "--out", out, stdin=stdin,
                                  monkeypatch=monkeypatch)
    assert code == 0, err
    assert "2 card(s) on 1 page(s)" in stdout
    (gray, text, _), = render(out)
    flat = " ".join(text.split())
    assert "Nguyễn Thị Hồng Nhung" in flat and "Trần Văn Đức" in flat
    assert set(codes(gray)) == {minted[0][2], minted[1][2]}


def test_decomposed_names_are_printed_composed(capsys, minted, tmp_path):
    nfd = unicodedata.normalize("NFD", "Nguyễn Thị Hồng Nhung")
    assert nfd != "Nguyễn Thị Hồng Nhung"
    holders = jsonl(tmp_path / "h.jsonl", [{"name": nfd, "payload": minted[0][2]}])
    out = tmp_path / "c.pdf"
    assert provision(capsys, "--cards", holders, "--out", out)[0] == 0
    assert "Nguyễn Thị Hồng Nhung" in " ".join(render(out)[0][1].split())


# --- location posters ----------------------------------------------------------------------

def test_poster_code_is_15_by_15_cm_with_the_place_name(printed):
    for (gray, text, _), place in zip(printed["pages"][2:], PLACES):
        (payload, (x0, y0, x1, y1)), = codes(gray).items()
        assert mm(x1 - x0) == pytest.approx(150, abs=2)
        assert mm(y1 - y0) == pytest.approx(150, abs=2)
        assert mm((x0 + x1) / 2) == pytest.approx(105, abs=2)  # centred on A4
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        assert lines == [place["name"], place["district"], place["code"]]
        # the name is printed large: above the code, and more than 1 cm tall
        ink_rows = np.nonzero((gray[:y0 - px(5)] < 128).any(axis=1))[0]
        assert mm(ink_rows.max() - ink_rows.min()) > 10


def test_poster_without_district_or_code(capsys, tmp_path):
    places = jsonl(tmp_path / "p.jsonl", [{"name": "Nhà văn hoá", "payload": "LOC-1"}])
    out = tmp_path / "p.pdf"
    assert provision(capsys, "--posters", places, "--out", out)[0] == 0
    (gray, text, _), = render(out)
    assert text.strip() == "Nhà văn hoá"
    assert set(codes(gray)) == {"LOC-1"}


# --- bad input ---------------------------------------------------------------------------------

BAD_CARDS = [
    ('{"name": "A", "payload": "X"}\n{"name": "B", "payload": \n', "h.jsonl:2: invalid JSON"),
    ('{"name": "A"}\n', 'h.jsonl:1: missing field "payload"'),
    ('\n{"payload": "not a certificate"}\n', 'h.jsonl:2: missing field "name"'),
    ('{"name": "A", "payload": "' + "A" * 4500 + '"}\n', "h.jsonl:1: payload too long"),
    ('{"name": "A", "payload": "HC1:6BFOXN"}\n', "h.jsonl:1: payload is not a readable HC1"),
    ('["A", "HC1:..."]\n', "h.jsonl:1: expected a JSON object"),
    ('{"name": 7, "payload": "X"}\n', 'h.jsonl:1: field "name" must be a string'),
    ('{"name": "王小明", "payload": "X"}\n', "h.jsonl:1: the name has characters the font"),
    ('{"name": "' + "Nguyễn " * 60 + '", "payload": "X"}\n', "h.jsonl:1: the name is too long"),
    ("", "h.jsonl: empty"),
    ("\n  \n", "h.jsonl: empty"),
]


@pytest.mark.parametrize("content, message", BAD_CARDS)
def test_bad_cards_input_fails_naming_the_line_and_writes_nothing(capsys, minted, tmp_path,
                                                                  content, message):
    holders = tmp_path / "h.jsonl"
    holders.write_text(content, encoding="utf-8")
    out = tmp_path / "cards.pdf"
    code, stdout, err = provision(capsys, "--cards", holders, "--out", out)
    assert code == 2
    assert message in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.jsonl"]  # no temporary left


BAD_POSTERS = [
    ('{"code": "x"}\n', 'p.jsonl:1: missing field "name"'),
    ('{"name": "Chợ"}\n', 'p.jsonl:1: missing field "code" (or "payload")'),
    ('{"name": "Chợ", "code": "c"}\n{"name": "Chợ", "payload": ""}\n',
     'p.jsonl:2: field "payload" must be a non-empty string'),
    ('{"name": "Chợ", "code": "' + "x" * 3000 + '"}\n', "p.jsonl:1: payload too long"),
]


@pytest.mark.parametrize("content, message", BAD_POSTERS)
def test_bad_posters_input_keeps_the_old_pdf(capsys, tmp_path, content, message):
    places = tmp_path / "p.jsonl"
    places.write_text(content, encoding="utf-8")
    out = tmp_path / "posters.pdf"
    out.write_bytes(b"the old PDF")
    code, _, err = provision(capsys, "--posters", places, "--out", out)
    assert code == 2
    assert message in err
    assert out.read_bytes() == b"the old PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "posters.pdf"]


def test_bad_line_from_stdin_is_named(capsys, monkeypatch, tmp_path):
    out = tmp_path / "c.pdf"
    code, _, err = provision(capsys, "--cards", "-", "--out", out, stdin="{oops\n",
                             monkeypatch=monkeypatch)
    assert code == 2 and "<stdin>:1: invalid JSON" in err
    assert not out.exists()


def test_missing_font_is_explained(capsys, minted, tmp_path):
    holders = jsonl(tmp_path / "h.jsonl", [{"name": "A", "payload": minted[0][2]}])
    out = tmp_path / "c.pdf"
    code, _, err = provision(capsys, "--cards", holders, "--out", out,
                             "--font", tmp_path / "no-such-font.ttf")
    assert code == 2
    assert "no-such-font.ttf not found" in err and "fonts-dejavu-core" in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    ([], "give --cards FILE, --posters FILE or both"),
    (["--cards", "-", "--posters", "-"], "only one of --cards and --posters"),
    (["--cards", "missing.jsonl"], "missing.jsonl: cannot read"),
])
def test_usage_errors(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = provision(capsys, *argv, "--out", "x.pdf")
    assert code == 2 and message in err
    assert not (tmp_path / "x.pdf").exists()


def test_cards_has_help_and_is_no_longer_a_placeholder(capsys):
    assert cli.main(["cards", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--cards" in out and "--posters" in out and "--out" in out
    assert cli.main(["--help"]) == 0
    listing = capsys.readouterr().out
    cards_line = next(line for line in listing.splitlines() if line.strip().startswith("cards"))
    assert "not built yet" not in cards_line
