#!/usr/bin/env python3
"""Generate the demo county's rosters (config/demo/*.csv): 夏溪县, a fictional county.

Deterministic (fixed seed): running it again writes the same files. The county has 14
townships, about 240 villages and communities, 700+ grids, a grid worker per grid, a
village head per village, two duty officers per township, a county duty officer, a
loudspeaker per village, and 50,000+ households bound to their grid's worker. Supervisor
links run grid worker → village head → township duty → county duty.

Phone numbers are fake: 11-digit mobiles in the 170 block, valid in form only. The demo
sends through simulated providers; never import these rosters into a gateway with real
SMS or voice adapters.

Usage: .venv/bin/python scripts/gen_demo_county.py [--out config/demo]
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20240715
COUNTY_CODE = "339901"
COUNTY_NAME = "夏溪县"
COUNTY_CENTRE = (29.10, 119.65)
MIN_HOUSEHOLDS = 50_000

# The first two are named in the demo's CAP warning (config/demo/cap-red-rainstorm.xml).
TOWNSHIPS = (
    "清溪镇", "白沙街道", "城关街道", "龙潭镇", "石门镇", "桃源乡", "青山镇",
    "杨柳镇", "荷塘乡", "金鸡镇", "双河镇", "梅岭乡", "松林镇", "凤凰镇",
)

# Surnames weighted roughly by how common they are.
SURNAMES = (
    ("王", 10), ("李", 10), ("张", 9), ("刘", 7), ("陈", 7), ("杨", 5), ("黄", 4), ("赵", 4),
    ("吴", 4), ("周", 4), ("徐", 3), ("孙", 3), ("马", 3), ("朱", 3), ("胡", 3), ("郭", 2),
    ("何", 2), ("高", 2), ("林", 2), ("罗", 2), ("郑", 2), ("梁", 2), ("谢", 2), ("宋", 1),
    ("唐", 1), ("许", 1), ("韩", 1), ("冯", 1), ("邓", 1), ("曹", 1), ("彭", 1), ("曾", 1),
    ("肖", 1), ("田", 1), ("董", 1), ("袁", 1), ("潘", 1), ("蒋", 1), ("蔡", 1), ("余", 1),
    ("杜", 1), ("叶", 1), ("程", 1), ("苏", 1), ("魏", 1), ("吕", 1), ("丁", 1), ("沈", 1),
    ("姚", 1), ("卢", 1), ("钟", 1), ("汪", 1), ("方", 1), ("毛", 1), ("邵", 1), ("严", 1),
)
GIVEN = (
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛",
    "明", "超", "秀", "英", "华", "平", "刚", "桂", "兰", "玉", "珍", "红", "霞", "建", "国",
    "文", "志", "海", "林", "春", "梅", "荣", "德", "福", "金", "凤", "云", "琴", "燕", "斌",
    "宇", "浩", "鑫", "俊", "欣", "婷", "雪", "佳", "晨", "瑞", "宏", "成", "光", "辉", "思",
)
VILLAGE_FIRST = "上下东西南北大小前后新老中高"
VILLAGE_SECOND = "坪湾塘岭坑桥溪山田洲冲垅源坝岗湖庄店园港"
VILLAGE_WHOLE = (
    "红星", "光明", "和平", "胜利", "团结", "新华", "永安", "长寿", "太平", "丰收", "幸福",
    "联合", "建设", "金星", "石桥", "枫树", "竹园", "桂花", "茶山", "白鹤", "黄泥", "青龙",
    "马鞍", "芦花", "杉木", "凉亭", "柏树", "水口", "龙井", "荷花",
)
COMMUNITY = (
    "文化", "建设", "人民", "解放", "中山", "滨江", "溪南", "溪北", "东门", "西门", "南门",
    "北门", "新华", "城东", "城西", "工业", "学府", "梅园", "桂苑", "锦绣", "阳光", "府前",
    "花园", "望江", "翠湖", "朝阳",
)


@dataclass
class County:
    regions: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    contacts: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    households: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    speakers: list[tuple[str, str, str]] = field(default_factory=list)
    supervisors: list[tuple[str, str]] = field(default_factory=list)
    bindings: list[tuple[str, str]] = field(default_factory=list)


class _People:
    """Names and distinct fake phone numbers, from one random stream."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.surnames = [s for s, _ in SURNAMES]
        self.weights = [w for _, w in SURNAMES]
        self.used: set[int] = set()

    def name(self) -> str:
        surname = self.rng.choices(self.surnames, self.weights)[0]
        given = self.rng.choice(GIVEN)
        if self.rng.random() < 0.6:
            given += self.rng.choice(GIVEN)
        return surname + given

    def phone(self) -> str:
        while True:
            n = self.rng.randrange(100_000_000)
            if n not in self.used:
                self.used.add(n)
                return f"170{n:08d}"


def _place(rng: random.Random, centre: tuple[float, float], spread: float
           ) -> tuple[float, float]:
    return (round(centre[0] + rng.uniform(-spread, spread), 4),
            round(centre[1] + rng.uniform(-spread, spread), 4))


def _region(code: str, name: str, level: str, parent: str, place: tuple[float, float]
            ) -> tuple[str, str, str, str, str, str]:
    return code, name, level, parent, str(place[0]), str(place[1])


def _village_names(rng: random.Random, township: str, count: int) -> list[str]:
    urban = township.endswith("街道")
    names: list[str] = []
    if not urban:
        # The township seat is usually a community named after the township.
        names.append(township[:2] + "社区")
    while len(names) < count:
        if urban:
            name = rng.choice(COMMUNITY) + "社区"
        else:
            pick = rng.random()
            if pick < 0.4:
                name = rng.choice(VILLAGE_FIRST) + rng.choice(VILLAGE_SECOND) + "村"
            elif pick < 0.7:
                name = rng.choice(SURNAMES)[0] + "家" + rng.choice(VILLAGE_SECOND) + "村"
            else:
                name = rng.choice(VILLAGE_WHOLE) + "村"
        if name not in names:
            names.append(name)
    return names


def generate(seed: int = SEED) -> County:
    rng = random.Random(seed)
    people = _People(rng)
    county = County()
    county.regions.append(_region(COUNTY_CODE, COUNTY_NAME, "county", "", COUNTY_CENTRE))
    county_duty = f"cd-{COUNTY_CODE}-1"
    county.contacts.append((county_duty, people.name(), people.phone(), "county_duty",
                            COUNTY_CODE))
    household_no = 0
    for t, township in enumerate(TOWNSHIPS, start=1):
        tcode = f"{COUNTY_CODE}{t:03d}"
        tplace = _place(rng, COUNTY_CENTRE, 0.25)
        county.regions.append(_region(tcode, township, "township", COUNTY_CODE, tplace))
        duty = [f"td-{tcode}-{i}" for i in (1, 2)]
        for d in duty:
            county.contacts.append((d, people.name(), people.phone(), "township_duty", tcode))
            county.supervisors.append((d, county_duty))
        for v, village in enumerate(_village_names(rng, township, rng.randint(12, 22)),
                                    start=1):
            vcode = f"{tcode}{v:03d}"
            vplace = _place(rng, tplace, 0.05)
            county.regions.append(_region(vcode, village, "village", tcode, vplace))
            head = f"vh-{vcode}"
            county.contacts.append((head, people.name(), people.phone(), "village_head",
                                    vcode))
            county.supervisors.append((head, duty[v % 2]))
            county.speakers.append((f"spk-{vcode}", f"{village}应急广播", vcode))
            for g in range(1, rng.randint(2, 4) + 1):
                gcode = f"{vcode}{g:03d}"
                gplace = _place(rng, vplace, 0.01)
                county.regions.append(_region(gcode, f"第{g}网格", "grid", vcode, gplace))
                worker = f"gw-{gcode}"
                county.contacts.append((worker, people.name(), people.phone(), "grid_worker",
                                        gcode))
                county.supervisors.append((worker, head))
                for _ in range(rng.randint(60, 85)):
                    household_no += 1
                    hh = f"hh-{household_no:05d}"
                    vulnerable = "1" if rng.random() < 0.03 else ""
                    county.households.append((hh, people.name(), people.phone(), gcode,
                                              vulnerable))
                    county.bindings.append((hh, worker))
    if household_no < MIN_HOUSEHOLDS:
        raise SystemExit(f"only {household_no} households; the demo needs {MIN_HOUSEHOLDS}")
    return county


def _write(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write(county: County, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "regions.csv", ("code", "name", "level", "parent_code", "lat", "lon"),
           county.regions)
    _write(out / "contacts.csv", ("external_id", "name", "phone", "role", "region_code"),
           county.contacts)
    _write(out / "households.csv", ("external_id", "name", "phone", "region_code",
                                    "vulnerable"), county.households)
    _write(out / "speakers.csv", ("id", "name", "region_code"), county.speakers)
    _write(out / "supervisors.csv", ("external_id", "supervisor_external_id"),
           county.supervisors)
    _write(out / "bindings.csv", ("household_external_id", "grid_worker_external_id"),
           county.bindings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "config" / "demo",
                        help="folder for the CSV files (config/demo)")
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    county = generate(args.seed)
    write(county, args.out)
    levels = [r[2] for r in county.regions]
    print(f"{args.out}: {levels.count('township')} townships, {levels.count('village')} "
          f"villages, {levels.count('grid')} grids, {len(county.contacts)} responsible "
          f"people, {len(county.households)} households, {len(county.speakers)} speakers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
