"""`greengate-provision cards --fleet-config`: a poster of an organisation's control point
carries the organisation's name, and its green sticker ("Doanh nghiệp xanh", "Hộ kinh doanh
xanh") only while the district approves it; `--organisation CODE` prints all its control
points. The fleet's real database (SQLite and PostgreSQL); the PDF is rendered and its text
extracted with pypdfium2, the codes decoded with zxing-cpp."""

from __future__ import annotations

import pypdfium2 as pdfium
import pytest
from sqlalchemy import select

from fleet import organisations
from fleet.models import (APPROVED, DISTRICT_OFFICER, SUSPENDED, District, Location,
                          Organisation, Ward)
from tests.test_cards import codes, jsonl, mm, provision, render

NOW = 1_633_420_800.0


@pytest.fixture
def fleet_toml(fleet_config, fleet_db, tmp_path):
    """The fleet's TOML file on a database with an-phat (a business, approved, two control
    points), binh-minh (a household business, approved), dong-a (suspended) and a park
    that is no organisation's."""
    with fleet_db() as s:
        q7 = District(code="q7", name="Quận 7")
        s.add(q7)
        s.flush()
        ward = Ward(code="tan-phong", name="Tân Phong", district_id=q7.id)
        s.add(ward)
        s.flush()
        orgs = {}
        for code, name, kind, status in (
                ("an-phat", "Công ty TNHH An Phát", "business", APPROVED),
                ("binh-minh", "Hộ kinh doanh Bình Minh", "household", APPROVED),
                ("dong-a", "Công ty Đông Á", "business", SUSPENDED)):
            orgs[code] = Organisation(code=code, name=name, kind=kind, district_id=q7.id,
                                      ward_id=ward.id, status=status, status_since=NOW,
                                      quota=10, suspended_reason="", created_at=NOW)
        s.add_all(orgs.values())
        s.flush()
        for code, name, org in (("ap-gate", "Cổng chính An Phát", "an-phat"),
                                ("ap-back", "Cổng sau An Phát", "an-phat"),
                                ("bm-door", "Cửa hàng Bình Minh", "binh-minh"),
                                ("da-gate", "Cổng Đông Á", "dong-a"),
                                ("park", "Công viên Tân Phong", None)):
            s.add(Location(code=code, name=name, address="", district_id=q7.id,
                           ward_id=ward.id, organisation_id=orgs[org].id if org else None))
        s.commit()
    path = tmp_path / "fleet.toml"
    path.write_text(f'[fleet]\ndata_dir = "{fleet_config.data_dir}"\n'
                    f'database_url = "{fleet_config.database_url}"\n'
                    'deployments = ["test"]\n', encoding="utf-8")
    return path


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def green_above_the_code(pdf_path) -> list[bool]:
    """Per page: whether the band above the code holds the sticker's green."""
    out = []
    for page in pdfium.PdfDocument(str(pdf_path)):
        rgb = page.render(scale=100 / 72).to_numpy()[:, :, :3].astype(int)
        band = rgb[: round(40 / 25.4 * 100)]  # the top 4 cm
        r, g, b = band[..., 0], band[..., 1], band[..., 2]
        # pdfium renders BGR(A) by default: the green channel is in the middle either way
        out.append(bool(((g > 100) & (g - r > 60) & (g - b > 40)).sum() > 500))
    return out


POSTERS = [{"name": "Cổng chính An Phát", "code": "ap-gate", "district": "Quận 7"},
           {"name": "Cửa hàng Bình Minh", "code": "bm-door", "district": "Quận 7"},
           {"name": "Cổng Đông Á", "code": "da-gate", "district": "Quận 7"},
           {"name": "Công viên Tân Phong", "code": "park", "district": "Quận 7"},
           {"name": "Chợ Bến Thành", "code": "q1-ben-thanh", "district": "Quận 1"}]


def test_an_approved_organisations_poster_carries_its_name_and_sticker(
        capsys, fleet_toml, fleet_db, tmp_path):
    places = jsonl(tmp_path / "places.jsonl", POSTERS)
    out = tmp_path / "posters.pdf"
    code, said, err = provision(capsys, "--posters", places, "--fleet-config", fleet_toml,
                                "--out", out)
    assert code == 0, err
    assert "5 poster(s), 2 with a green sticker" in said
    pages = render(out)
    texts = [lines(text) for _, text, _ in pages]
    assert texts == [
        ["Doanh nghiệp xanh", "Cổng chính An Phát", "Quận 7", "ap-gate",
         "Công ty TNHH An Phát"],
        ["Hộ kinh doanh xanh", "Cửa hàng Bình Minh", "Quận 7", "bm-door",
         "Hộ kinh doanh Bình Minh"],
        # suspended: its name, no sticker
        ["Cổng Đông Á", "Quận 7", "da-gate", "Công ty Đông Á"],
        ["Công viên Tân Phong", "Quận 7", "park"],
        ["Chợ Bến Thành", "Quận 1", "q1-ben-thanh"]]
    assert green_above_the_code(out) == [True, True, False, False, False]
    for (gray, _, _), place in zip(pages, POSTERS):  # the code is still 15 cm and reads
        (payload, (x0, y0, x1, y1)), = codes(gray).items()
        assert payload == "greengate:location:" + place["code"]
        assert mm(x1 - x0) == pytest.approx(150, abs=2)

    # the district suspends An Phát: a poster printed now has no sticker
    with fleet_db() as s:
        org = s.scalar(select(Organisation).where(Organisation.code == "an-phat"))
        organisations.set_status(s, org, SUSPENDED, actor="lan", role=DISTRICT_OFFICER,
                                 reason="F0")
        s.commit()
    assert provision(capsys, "--posters", places, "--fleet-config", fleet_toml,
                     "--out", out)[0] == 0
    first = lines(render(out)[0][1])
    assert first == ["Cổng chính An Phát", "Quận 7", "ap-gate", "Công ty TNHH An Phát"]
    assert green_above_the_code(out)[0] is False


def test_posters_of_every_control_point_of_an_organisation(capsys, fleet_toml, tmp_path):
    out = tmp_path / "an-phat.pdf"
    code, said, err = provision(capsys, "--organisation", "an-phat", "--fleet-config",
                                fleet_toml, "--out", out)
    assert code == 0, err
    assert "2 poster(s), 2 with a green sticker" in said
    assert [lines(text) for _, text, _ in render(out)] == [
        ["Doanh nghiệp xanh", "Cổng sau An Phát", "Quận 7", "ap-back",
         "Công ty TNHH An Phát"],
        ["Doanh nghiệp xanh", "Cổng chính An Phát", "Quận 7", "ap-gate",
         "Công ty TNHH An Phát"]]


def test_fleet_problems_are_said_and_nothing_is_written(capsys, fleet_toml, tmp_path):
    out = tmp_path / "x.pdf"
    cases = [
        (["--organisation", "an-phat"], "--organisation needs the fleet's configuration"),
        (["--organisation", "nobody", "--fleet-config", fleet_toml],
         "--organisation nobody: no organisation with that code"),
        (["--organisation", "an-phat", "--fleet-config", tmp_path / "missing.toml"],
         "missing.toml: cannot read the configuration"),
    ]
    for argv, message in cases:
        code, _, err = provision(capsys, *argv, "--out", out)
        assert code == 2 and message in err, (argv, err)
    assert not out.exists()
    broken = tmp_path / "broken.toml"
    broken.write_text('[fleet]\ndatabase_url = "sqlite:////nonexistent/dir/fleet.sqlite"\n',
                      encoding="utf-8")
    code, _, err = provision(capsys, "--organisation", "an-phat", "--fleet-config", broken,
                             "--out", out)
    assert code == 2 and "cannot read the fleet's database" in err, err
    assert not out.exists()
