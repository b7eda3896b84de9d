"""A small county written straight into the store, for tests that are not about the registry."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from warngate.store import Store
from warngate.store.schema import contacts, regions, speakers

COUNTY = "339901"


def _phone(n: int) -> str:
    return f"+86170{n:08d}"


async def write_small_county(
    store: Store, *, townships: int = 2, villages: int = 3, grids: int = 2, households: int = 4
) -> dict[str, Any]:
    """Townships × villages × grids, one grid worker per grid, ``households`` per grid."""
    region_rows: list[dict[str, Any]] = [
        {"code": COUNTY, "name": "夏溪县", "level": "county", "parent_code": None}
    ]
    people: list[dict[str, Any]] = [
        {"external_id": "county-duty", "name": "县值班员", "phone": _phone(1),
         "role": "county_duty", "region_code": COUNTY}
    ]
    speaker_rows: list[dict[str, Any]] = []
    n = 10
    for t in range(1, townships + 1):
        tcode = f"{COUNTY}{t:03d}"
        region_rows.append({"code": tcode, "name": f"第{t}镇", "level": "township",
                            "parent_code": COUNTY, "township_code": tcode})
        people.append({"external_id": f"duty-{tcode}", "name": f"镇值班员{t}",
                       "phone": _phone(n), "role": "township_duty", "region_code": tcode,
                       "township_code": tcode})
        n += 1
        for v in range(1, villages + 1):
            vcode = f"{tcode}{v:03d}"
            region_rows.append({"code": vcode, "name": f"第{t}镇{v}村", "level": "village",
                                "parent_code": tcode, "township_code": tcode,
                                "village_code": vcode})
            people.append({"external_id": f"head-{vcode}", "name": f"村长{vcode[-4:]}",
                           "phone": _phone(n), "role": "village_head", "region_code": vcode,
                           "township_code": tcode, "village_code": vcode})
            n += 1
            speaker_rows.append({"id": f"spk-{vcode}", "name": f"{vcode}喇叭",
                                 "region_code": vcode, "township_code": tcode,
                                 "village_code": vcode})
            for g in range(1, grids + 1):
                gcode = f"{vcode}{g:03d}"
                region_rows.append({"code": gcode, "name": f"第{g}网格", "level": "grid",
                                    "parent_code": vcode, "township_code": tcode,
                                    "village_code": vcode})
                common = {"region_code": gcode, "township_code": tcode, "village_code": vcode,
                          "grid_code": gcode}
                people.append({"external_id": f"gw-{gcode}", "name": f"网格员{gcode[-5:]}",
                               "phone": _phone(n), "role": "grid_worker", **common})
                n += 1
                for h in range(households):
                    people.append({"external_id": f"hh-{gcode}-{h}", "name": f"住户{h}",
                                   "phone": _phone(n), "role": "household", **common})
                    n += 1
    async with store.write() as conn:
        for r in region_rows:
            r.setdefault("township_code", None)
            r.setdefault("village_code", None)
        await conn.execute(insert(regions), region_rows)
        for p in people:
            for k in ("township_code", "village_code", "grid_code"):
                p.setdefault(k, None)
        await conn.execute(insert(contacts), people)
        await conn.execute(insert(speakers), speaker_rows)
        ids = dict((await conn.execute(select(contacts.c.external_id, contacts.c.id))).all())
        links = []
        for p in people:
            ext = p["external_id"]
            if ext.startswith("gw-"):
                sup = f"head-{p['village_code']}"
            elif ext.startswith("head-"):
                sup = f"duty-{p['township_code']}"
            elif ext.startswith("duty-"):
                sup = "county-duty"
            else:
                continue
            links.append({"b_id": ids[ext], "b_sup": ids[sup]})
        from sqlalchemy import bindparam
        await conn.execute(
            update(contacts).where(contacts.c.id == bindparam("b_id"))
            .values(supervisor_id=bindparam("b_sup")),
            links,
        )
    return {"ids": ids, "townships": [f"{COUNTY}{t:03d}" for t in range(1, townships + 1)]}
