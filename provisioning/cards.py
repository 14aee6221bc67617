"""`greengate-provision cards`: printable PDF of personal QR cards and location posters.

For people without a smartphone (seed documents 000 and 003): a personal card
carries the holder's HC1 code, printed 5 cm x 5 cm, with the holder's name
beside it and cut marks around it; a location poster carries a place's code,
printed 15 cm x 15 cm, with the place's name above it. With the fleet's configuration
(`--fleet-config`), a poster of a control point of an organisation (docs/organisations.md)
carries the organisation's name, and while the district approves it, its green sticker
("Doanh nghiệp xanh", "Hộ kinh doanh xanh" for a household business): a suspended,
closed or not yet approved one gets none, so a poster never shows a place as open that
is not. `--organisation CODE` prints the posters of all its control points.

"5 x 5 cm" is the printed code: the square from the outer edge of one finder
pattern to the other (the dark modules). The quiet zone (4 white modules,
ISO/IEC 18004) comes on top of it, inside the card. A typical ES256 HC1
vaccination certificate (about 560 characters) is a version 18 code at error
correction Q, 89 modules wide: 50 mm / 89 = 0.56 mm per module, about twice
the ~0.25 mm that phone and kiosk cameras read comfortably. Even version 40
(177 modules, the largest QR code) stays at 0.28 mm. docs/provisioning.md
has the figures.

segno makes the QR matrix; fpdf2 lays out the A4 pages, embeds DejaVu Sans
(Vietnamese diacritics) and draws each code as one vector path of rectangles,
so the code prints sharp at any printer resolution.
"""

import json
import os
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import segno

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_PACKAGE = "fonts-dejavu-core"

A4 = (210.0, 297.0)  # mm, portrait
ERROR = "q"  # what the EU DCC spec recommends for printed codes (as issuer.qr_png)
QUIET_MODULES = 4  # ISO/IEC 18004 quiet zone

# Personal cards: the code, its quiet zone (at least CARD_PAD), the name beside it.
CARD_CODE = 50.0
CARD_PAD = 5.0  # white around the code; grows to 4 modules for coarse codes
CARD_TEXT = 24.0  # width of the name column
CARD_TEXT_PAD = 4.0  # white right of the name
CARD_GUTTER = 10.0  # between cards: the cut marks live here
PAGE_MARGIN = 12.0  # page edge to the nearest card edge
MARK_GAP = 1.5  # cut marks start this far outside a card corner ...
MARK_LENGTH = 3.0  # ... and are this long (gutter >= 2 * (gap + length) keeps neighbours apart)
MARK_WIDTH = 0.2
NAME_PT = (12.0, 6.0)  # largest and smallest name size tried

# Location posters: one per page, the name above the code, code and district below.
POSTER_CODE = 150.0
POSTER_CODE_TOP = 75.0
POSTER_MARGIN = 15.0
TITLE_PT = (40.0, 14.0)
FOOT_PT = 16.0
STICKER_PT = 22.0  # the sticker's text, white on green, above the place's name
STICKER_H = 12.0
STICKER_PAD = 6.0  # left and right of the sticker's text
STICKER_GAP = 3.0  # between the sticker and the name
STICKER_GREEN = (0, 122, 61)
ORG_NAME_MAX = 120  # characters of an organisation's name printed (the fleet allows 300)
LOCATION_PREFIX = "greengate:location:"

PT = 25.4 / 72  # mm per point
LINE = 1.2  # line height / font size


class CardsError(Exception):
    """Bad input or set-up; the message names the file and line where there is one."""


@dataclass
class Card:
    name: str
    payload: str
    where: str  # "FILE:LINE", for messages
    qr: segno.QRCode


@dataclass
class Poster:
    name: str
    code: str
    district: str
    payload: str
    where: str
    qr: segno.QRCode
    organisation: str = ""  # the organisation whose control point it is (from the fleet)
    sticker: str = ""  # its status sticker, only while approved


# --- input ---------------------------------------------------------------------------------

def _records(path: str, stdin=None):
    """(where, text) for each non-blank line of PATH ('-': standard input)."""
    label = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = (stdin or sys.stdin).read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CardsError(f"{label}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CardsError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = [(f"{label}:{n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(where, line) for where, line in lines if line]
    if not lines:
        raise CardsError(f"{label}: empty: expected one JSON object per line")
    return lines


def _object(where: str, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CardsError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise CardsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _text(where: str, obj: dict, key: str, *, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise CardsError(f"{where}: missing field \"{key}\"")
        return ""
    if not isinstance(value, str):
        raise CardsError(f"{where}: field \"{key}\" must be a string")
    # NFC: the font has Vietnamese letters precomposed; decomposed combining marks
    # would print beside their letter. Line breaks and runs of spaces become one space.
    value = " ".join(unicodedata.normalize("NFC", value).split())
    if required and not value:
        raise CardsError(f"{where}: field \"{key}\" is empty")
    return value


def make_qr(payload: str, where: str) -> segno.QRCode:
    try:
        return segno.make(payload, error=ERROR, micro=False)
    except segno.DataOverflowError:
        raise CardsError(f"{where}: payload too long for a QR code ({len(payload)} characters; "
                         "a QR code holds at most 4,296 HC1 characters, fewer of other text)"
                         ) from None


def holder_name(payload: str) -> str:
    """The holder's name as the HC1 certificate writes it (nam.fn nam.gn); raises ValueError."""
    from greengate import cose, hc1
    from greengate.content import CLAIM_HCERT, parse_claims
    from greengate.errors import Rejected
    try:
        claims = cose.loads(cose.parse(hc1.decode(payload)).payload)
        parse_claims(claims)
    except (Rejected, ValueError) as exc:
        raise ValueError(f"not a readable HC1 certificate: {exc}") from None
    nam = claims[CLAIM_HCERT][1]["nam"]
    name = " ".join(nam[k] for k in ("fn", "gn") if nam.get(k))
    if not name:  # only the standardised (ICAO) names
        name = " ".join(nam[k].replace("<", " ") for k in ("fnt", "gnt") if nam.get(k))
    return name


def load_cards(path: str, stdin=None) -> list[Card]:
    """JSON lines {"name", "payload"}; "name" may be left out when the payload is HC1
    (then it is the certificate's own nam.fn + nam.gn). A bare "HC1:..." line, as
    `greengate-provision issuer mint` prints it, counts as {"payload": line}."""
    cards = []
    for where, line in _records(path, stdin):
        obj = {"payload": line} if line.startswith("HC1:") else _object(where, line)
        payload = obj.get("payload")
        if payload is None:
            raise CardsError(f"{where}: missing field \"payload\"")
        if not isinstance(payload, str) or not payload.strip():
            raise CardsError(f"{where}: field \"payload\" must be a non-empty string")
        payload = payload.strip()
        name = _text(where, obj, "name", required=False)
        if payload.startswith("HC1:"):
            try:
                from_cert = holder_name(payload)
            except ValueError as exc:
                raise CardsError(f"{where}: payload is {exc}") from None
            name = name or " ".join(unicodedata.normalize("NFC", from_cert).split())
        if not name:
            raise CardsError(f"{where}: missing field \"name\" (the payload is not HC1, so "
                             "there is no name to read from it)")
        cards.append(Card(name, payload, where, make_qr(payload, where)))
    return cards


def load_posters(path: str, stdin=None) -> list[Poster]:
    """JSON lines {"name", "code", "district", "payload"}: "name" and one of "code" and
    "payload" required; the payload defaults to "greengate:location:<code>"."""
    posters = []
    for where, line in _records(path, stdin):
        obj = _object(where, line)
        name = _text(where, obj, "name", required=True)
        code = _text(where, obj, "code", required=False)
        district = _text(where, obj, "district", required=False)
        payload = obj.get("payload")
        if payload is not None and (not isinstance(payload, str) or not payload.strip()):
            raise CardsError(f"{where}: field \"payload\" must be a non-empty string")
        if payload is None:
            if not code:
                raise CardsError(f"{where}: missing field \"code\" (or \"payload\")")
            payload = LOCATION_PREFIX + code
        posters.append(Poster(name, code, district, payload, where, make_qr(payload, where)))
    return posters


def from_fleet(config_path: str, posters: list[Poster], organisation: str | None = None
               ) -> list[Poster]:
    """`posters` with their organisation's name and sticker from the fleet's database
    (matched on the location code), then, with `organisation`, a poster for each of that
    organisation's control points. CardsError when the fleet cannot be read."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from fleet import organisations
    from fleet.config import ConfigError, load
    from fleet.db import make_engine, make_sessions
    from fleet.models import District, Location, Organisation
    try:
        config = load(config_path)
    except ConfigError as exc:
        raise CardsError(str(exc)) from None
    engine = make_engine(config.database_url)
    try:
        with make_sessions(engine)() as session:
            posters = list(posters)
            if organisation is not None:
                org = session.scalar(select(Organisation).where(
                    Organisation.code == organisation))
                if org is None:
                    raise CardsError(f"--organisation {organisation}: no organisation with "
                                     "that code in the fleet")
                places = session.execute(
                    select(Location, District).outerjoin(District,
                                                         Location.district_id == District.id)
                    .where(Location.organisation_id == org.id).order_by(Location.code)).all()
                if not places:
                    raise CardsError(f"--organisation {organisation}: it has no control "
                                     "points (give a location its organisation first)")
                where = f"organisation {organisation}"
                for loc, district in places:
                    payload = LOCATION_PREFIX + loc.code
                    posters.append(Poster(_clean(loc.name), loc.code,
                                          _clean(district.name) if district else "", payload,
                                          f"{where}, location {loc.code}",
                                          make_qr(payload, where)))
            codes = {p.code for p in posters if p.code}
            owners = {}
            if codes:
                owners = {code: org for code, org in session.execute(
                    select(Location.code, Organisation)
                    .join(Organisation, Location.organisation_id == Organisation.id)
                    .where(Location.code.in_(sorted(codes)))).all()}
            for poster in posters:
                org = owners.get(poster.code)
                if org is not None:
                    name = _clean(org.name)
                    poster.organisation = name if len(name) <= ORG_NAME_MAX \
                        else name[:ORG_NAME_MAX - 1].rstrip() + "…"
                    poster.sticker = organisations.sticker(org) or ""
    except SQLAlchemyError as exc:
        raise CardsError(f"cannot read the fleet's database ({config.database_url.split('@')[-1]}"
                         f"): {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
                         ) from None
    finally:
        engine.dispose()
    return posters


def _clean(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text or "").split())


# --- layout ----------------------------------------------------------------------------------

def module_mm(qr: segno.QRCode, size: float) -> float:
    return size / qr.symbol_size(border=0)[0]


@dataclass(frozen=True)
class CardLayout:
    """Where the cards go on an A4 page (mm from the top-left corner)."""
    pad: float  # quiet white around the code, >= CARD_PAD and >= 4 modules
    width: float
    height: float
    slots: tuple  # (x, y) of each card's top-left corner on a page, row by row

    def code_box(self, x: float, y: float) -> tuple[float, float, float, float]:
        return x + self.pad, y + self.pad, CARD_CODE, CARD_CODE

    def text_box(self, x: float, y: float) -> tuple[float, float, float, float]:
        left = x + self.pad + CARD_CODE + self.pad
        return left, y + self.pad, CARD_TEXT, CARD_CODE


def card_layout(cards=()) -> CardLayout:
    pad = max([CARD_PAD] + [QUIET_MODULES * module_mm(c.qr, CARD_CODE) for c in cards])
    width = pad + CARD_CODE + pad + CARD_TEXT + CARD_TEXT_PAD
    height = pad + CARD_CODE + pad
    page_w, page_h = A4
    cols = max(1, int((page_w - 2 * PAGE_MARGIN + CARD_GUTTER) // (width + CARD_GUTTER)))
    rows = max(1, int((page_h - 2 * PAGE_MARGIN + CARD_GUTTER) // (height + CARD_GUTTER)))
    left = (page_w - (cols * width + (cols - 1) * CARD_GUTTER)) / 2
    top = (page_h - (rows * height + (rows - 1) * CARD_GUTTER)) / 2
    slots = tuple((left + c * (width + CARD_GUTTER), top + r * (height + CARD_GUTTER))
                  for r in range(rows) for c in range(cols))
    return CardLayout(pad, width, height, slots)


def cut_marks(x: float, y: float, width: float, height: float):
    """Line segments (x1, y1, x2, y2): two at each corner, outside the card."""
    g, n = MARK_GAP, MARK_GAP + MARK_LENGTH
    for cx, sx in ((x, -1), (x + width, 1)):
        for cy, sy in ((y, -1), (y + height, 1)):
            yield cx + sx * g, cy, cx + sx * n, cy  # horizontal, along the edge y = cy
            yield cx, cy + sy * g, cx, cy + sy * n  # vertical, along the edge x = cx


# --- drawing -----------------------------------------------------------------------------------

def _new_pdf(font: str):
    from fpdf import FPDF
    if not Path(font).is_file():
        raise CardsError(f"font {font} not found: install the Debian package {FONT_PACKAGE} "
                         "(scripts/setup.sh does) or pass --font with a Unicode TTF font")
    pdf = FPDF(unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margins(0, 0, 0)
    pdf.set_title("GreenGate QR cards")
    pdf.set_creator("greengate-provision cards")
    try:
        pdf.add_font("card", fname=font)
    except Exception as exc:  # fontTools' errors for a file that is no font
        raise CardsError(f"font {font} cannot be loaded: {exc}") from None
    return pdf


def _check_glyphs(pdf, text: str, where: str, what: str) -> None:
    cmap = pdf.fonts["card"].cmap
    missing = sorted({ch for ch in text if not ch.isspace() and ord(ch) not in cmap})
    if missing:
        shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[:5])
        raise CardsError(f"{where}: {what} has characters the font cannot print: {shown}")


def draw_qr(pdf, qr: segno.QRCode, x: float, y: float, size: float) -> None:
    """The symbol (no quiet zone) as one filled vector path, size x size mm at (x, y).

    One path of rectangles, one per run of dark modules in a row: filled as a
    whole, so no anti-aliasing seams show between neighbouring modules."""
    from fpdf.drawing import DeviceGray, PaintedPath
    from fpdf.enums import PathPaintRule
    matrix = [list(row) for row in qr.matrix_iter(border=0)]
    step = size / len(matrix)
    path = PaintedPath()
    path.style.paint_rule = PathPaintRule.FILL_NONZERO
    path.style.fill_color = DeviceGray(0)
    path.style.stroke_color = None
    for r, row in enumerate(matrix):
        c = 0
        while c < len(row):
            if not row[c]:
                c += 1
                continue
            start = c
            while c < len(row) and row[c]:
                c += 1
            path.rectangle(x + start * step, y + r * step, (c - start) * step, step)
    pdf.draw_path(path, copy=False)  # a fresh path: fpdf2's defensive deep copy costs 0.25 s


def _fit(pdf, text: str, width: float, height: float, sizes: tuple[float, float],
         max_lines: int = 99):
    """The largest font size (half-point steps) at which TEXT wraps, between words, into
    WIDTH x HEIGHT mm; returns (size, lines) or None."""
    size = sizes[0]
    while size >= sizes[1]:
        pdf.set_font("card", size=size)
        words_fit = all(pdf.get_string_width(w) <= width for w in text.split())
        if words_fit:
            lines = pdf.multi_cell(width, size * PT * LINE, text, dry_run=True, output="LINES")
            if len(lines) <= max_lines and len(lines) * size * PT * LINE <= height:
                return size, lines
        size -= 0.5
    return None


def _text_block(pdf, text: str, box, sizes, where: str, what: str, *, align: str,
                max_lines: int = 99, valign: str = "middle") -> None:
    x, y, w, h = box
    fitted = _fit(pdf, text, w, h, sizes, max_lines)
    if fitted is None:
        raise CardsError(f"{where}: {what} is too long to print ({len(text)} characters)")
    size, lines = fitted
    pdf.set_font("card", size=size)
    line_h = size * PT * LINE
    block = len(lines) * line_h
    top = {"top": y, "middle": y + (h - block) / 2, "bottom": y + h - block}[valign]
    pdf.set_xy(x, top)
    pdf.multi_cell(w, line_h, text, align=align)


def draw_cards(pdf, cards: list[Card]) -> None:
    layout = card_layout(cards)
    for i, card in enumerate(cards):
        slot = i % len(layout.slots)
        if slot == 0:
            pdf.add_page()
        x, y = layout.slots[slot]
        _check_glyphs(pdf, card.name, card.where, "the name")
        cx, cy, size, _ = layout.code_box(x, y)
        draw_qr(pdf, card.qr, cx, cy, size)
        _text_block(pdf, card.name, layout.text_box(x, y), NAME_PT, card.where, "the name",
                    align="L")
        pdf.set_draw_color(0)
        pdf.set_line_width(MARK_WIDTH)
        for x1, y1, x2, y2 in cut_marks(x, y, layout.width, layout.height):
            pdf.line(x1, y1, x2, y2)


def draw_sticker(pdf, text: str, top: float) -> float:
    """The status sticker, white on green, centred at `top`; returns its bottom."""
    page_w, _ = A4
    pdf.set_font("card", size=STICKER_PT)
    width = pdf.get_string_width(text) + 2 * STICKER_PAD
    left = (page_w - width) / 2
    pdf.set_fill_color(*STICKER_GREEN)
    pdf.rect(left, top, width, STICKER_H, style="F", round_corners=True, corner_radius=2.0)
    pdf.set_text_color(255)
    pdf.set_xy(left, top)
    pdf.cell(width, STICKER_H, text, align="C")
    pdf.set_text_color(0)
    return top + STICKER_H


def draw_posters(pdf, posters: list[Poster]) -> None:
    page_w, page_h = A4
    width = page_w - 2 * POSTER_MARGIN
    for poster in posters:
        pdf.add_page()
        quiet = QUIET_MODULES * module_mm(poster.qr, POSTER_CODE)
        left = (page_w - POSTER_CODE) / 2
        draw_qr(pdf, poster.qr, left, POSTER_CODE_TOP, POSTER_CODE)
        title_top = POSTER_MARGIN
        if poster.sticker:
            _check_glyphs(pdf, poster.sticker, poster.where, "the sticker")
            title_top = draw_sticker(pdf, poster.sticker, POSTER_MARGIN) + STICKER_GAP
        title_h = POSTER_CODE_TOP - quiet - title_top
        _check_glyphs(pdf, poster.name, poster.where, "the name")
        _text_block(pdf, poster.name, (POSTER_MARGIN, title_top, width, title_h), TITLE_PT,
                    poster.where, "the name", align="C", max_lines=3, valign="bottom")
        top = POSTER_CODE_TOP + POSTER_CODE + quiet
        # the organisation's name may take two smaller lines; the others one
        for part, size, org in ((poster.district, FOOT_PT, False),
                                (poster.code, FOOT_PT - 4, False),
                                (poster.organisation, FOOT_PT, True)):
            if part:
                what = "the organisation's name" if org else "the code or district"
                _check_glyphs(pdf, part, poster.where, what)
                height = size * PT * LINE
                _text_block(pdf, part, (POSTER_MARGIN, top, width, height),
                            (size, 7.0 if org else 8.0), poster.where, what, align="C",
                            max_lines=2 if org else 1)
                top += height + 1


def render(cards: list[Card] = (), posters: list[Poster] = (), *, font: str = FONT) -> bytes:
    """The PDF: card pages first, then one page per poster."""
    pdf = _new_pdf(font)
    if cards:
        draw_cards(pdf, list(cards))
    if posters:
        draw_posters(pdf, list(posters))
    return bytes(pdf.output())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside PATH, then rename: never a half-written PDF.

    The file is readable by its owner only: cards hold health certificates."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- command line ----------------------------------------------------------------------------

def add_parser(sub) -> None:
    cmd = sub.add_parser(
        "cards", help="print personal QR cards and location posters as PDF",
        description="A4 PDF: personal QR cards (5 x 5 cm code, name beside it, cut marks), "
                    "then location posters (15 x 15 cm code, place name above).")
    cmd.add_argument("--cards", metavar="FILE",
                     help='JSON lines {"name", "payload"} (name optional for HC1; '
                          'bare HC1: lines too); "-" for standard input')
    cmd.add_argument("--posters", metavar="FILE",
                     help='JSON lines {"name", "code", "district", "payload"} '
                          '(payload defaults to greengate:location:CODE); "-" for standard input')
    cmd.add_argument("--fleet-config", metavar="FILE",
                     default=os.environ.get("GREENGATE_FLEET_CONFIG"),
                     help="the fleet's TOML file (default: $GREENGATE_FLEET_CONFIG): posters of "
                          "an organisation's control points carry its name, and its green "
                          "sticker while approved")
    cmd.add_argument("--organisation", metavar="CODE",
                     help="posters for every control point of this organisation (needs the "
                          "fleet's configuration)")
    cmd.add_argument("--out", required=True, metavar="PDF", help="the PDF to write")
    cmd.add_argument("--font", default=FONT,
                     help=f"Unicode TTF font (default: {FONT}, Debian package {FONT_PACKAGE})")
    cmd.set_defaults(handler=run)


def run(args) -> int:
    try:
        organisation = getattr(args, "organisation", None)
        fleet_config = getattr(args, "fleet_config", None)
        if not args.cards and not args.posters and not organisation:
            raise CardsError("give --cards FILE, --posters FILE or both (or --organisation "
                             "CODE)")
        if organisation and not fleet_config:
            raise CardsError("--organisation needs the fleet's configuration: --fleet-config "
                             "FILE or $GREENGATE_FLEET_CONFIG")
        if args.cards == "-" and args.posters == "-":
            raise CardsError("only one of --cards and --posters can read standard input")
        out = Path(args.out)
        if not out.parent.is_dir():
            raise CardsError(f"{out}: directory {out.parent} does not exist")
        cards = load_cards(args.cards) if args.cards else []
        posters = load_posters(args.posters) if args.posters else []
        if fleet_config and (posters or organisation):
            posters = from_fleet(fleet_config, posters, organisation)
        data = render(cards, posters, font=args.font)
        write_atomic(out, data)
    except CardsError as exc:
        print(f"greengate-provision cards: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"greengate-provision cards: cannot write {args.out}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    modules = [module_mm(c.qr, CARD_CODE) for c in cards]
    parts = []
    if cards:
        per_page = len(card_layout(cards).slots)
        parts.append(f"{len(cards)} card(s) on {-(-len(cards) // per_page)} page(s), "
                     f"modules {min(modules):.2f} mm or larger")
    if posters:
        stickers = sum(1 for p in posters if p.sticker)
        parts.append(f"{len(posters)} poster(s)" + (f", {stickers} with a green sticker"
                                                     if stickers else ""))
    print(f"wrote {out}: {'; '.join(parts)}")
    return 0
