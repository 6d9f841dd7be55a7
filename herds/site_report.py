"""The record of a site drill an auditor can read: who, when, which herds; per herd the
plan, the target and why, RTO, data lost, DNS cut-over and the gates it passed; totals.

Read from the campaign, its switchover jobs and their Drill rows (ORM reads only, no I/O
to the fleet). `as_dict` is the JSON export; `csv_rows` the CSV one; the printable page
renders the same dict.
"""

from __future__ import annotations

from herds.models import Drill
from instances.choices import JobState
from instances.models import Campaign
from instances.wal import format_bytes

CSV_COLUMNS = [
    "campaign",
    "herd",
    "job",
    "state",
    "old_primary",
    "new_primary",
    "why",
    "plan",
    "rto_seconds",
    "data_lost_bytes",
    "data_lost_exact",
    "dns_cutover_seconds",
    "dns_ok",
    "gates",
    "started_at",
    "finished_at",
    "outcome",
    "earlier_attempts",
]


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def _lost(drill: Drill | None) -> str:
    if drill is None or drill.data_lost_bytes is None:
        return "unknown"
    text = format_bytes(drill.data_lost_bytes)
    return text if drill.data_lost_exact else f"at least {text} (true loss unknown)"


def as_dict(campaign: Campaign) -> dict:
    every = list(campaign.jobs.select_related("herd").order_by("wave", "pk"))
    # A job retried within the campaign is replaced by its retry; the herd's row names
    # the attempts that failed before it.
    by_pk = {j.pk: j for j in every}
    retried = {j.retry_of_id for j in every if j.retry_of_id}
    jobs = [j for j in every if j.pk not in retried]
    drills = {d.job_id: d for d in Drill.objects.filter(job__in=jobs)}
    herds = []
    for job in jobs:
        earlier = []
        previous = by_pk.get(job.retry_of_id)
        while previous is not None:
            earlier.append({"job": previous.pk, "state": previous.state, "error": previous.error})
            previous = by_pk.get(previous.retry_of_id)
        drill = drills.get(job.pk)
        site = job.params.get("site", {})
        herds.append(
            {
                "herd": job.herd.name if job.herd else job.target_label,
                "job": job.pk,
                "wave": job.wave,
                "state": "held" if job.held else job.state,
                "old_primary": drill.old_primary if drill else "",
                "new_primary": drill.new_primary if drill else "",
                "why": site.get("why", ""),
                "plan": drill.plan if drill else site.get("plan", ""),
                "gates": [
                    {"gate": name, "passed": ok, "detail": detail}
                    for name, ok, detail in site.get("gates", [])
                ],
                "rto_seconds": drill.rto_seconds if drill else None,
                "data_lost_bytes": drill.data_lost_bytes if drill else None,
                "data_lost_exact": drill.data_lost_exact if drill else None,
                "data_lost": _lost(drill),
                "dns_cutover_seconds": drill.dns_seconds if drill else None,
                "dns_ok": drill.dns_ok if drill else None,
                "started_at": _iso(job.started_at),
                "finished_at": _iso(job.finished_at),
                "seconds": job.duration,
                "outcome": job.error or (drill.outcome if drill else "") or job.summary,
                "earlier_attempts": earlier[::-1],
            }
        )
    ended = [h for h in herds if h["seconds"] is not None and h["finished_at"]]
    slowest = max(ended, key=lambda h: h["seconds"], default=None)
    failures = [h for h in herds if h["state"] in JobState.terminal() and h["state"] != "succeeded"]
    wall = (
        (campaign.finished_at - campaign.created_at).total_seconds()
        if campaign.finished_at
        else None
    )
    return {
        "campaign": campaign.pk,
        "kind": campaign.kind,
        "title": campaign.title,
        "state": campaign.state,
        "state_note": campaign.state_note,
        "requested_by": campaign.requested_by_name,
        "created_at": _iso(campaign.created_at),
        "finished_at": _iso(campaign.finished_at),
        "reverses": campaign.reverse_of_id,
        "concurrency": campaign.concurrency,
        "canary": campaign.canary,
        "left_out": campaign.params.get("left_out", []),
        "herds": herds,
        "totals": {
            "herds": len(herds),
            "succeeded": sum(1 for h in herds if h["state"] == JobState.SUCCEEDED),
            "failures": len(failures),
            "wall_time_seconds": wall,
            "slowest_herd": slowest["herd"] if slowest else None,
            "slowest_seconds": slowest["seconds"] if slowest else None,
            "max_rto_seconds": max(
                (h["rto_seconds"] for h in herds if h["rto_seconds"] is not None), default=None
            ),
            "data_lost_bytes": sum(h["data_lost_bytes"] or 0 for h in herds),
            "data_lost_all_exact": all(
                h["data_lost_exact"] for h in herds if h["state"] == JobState.SUCCEEDED
            ),
        },
    }


def csv_rows(record: dict) -> list[list]:
    rows = [CSV_COLUMNS]
    for herd in record["herds"]:
        gates = "; ".join(
            f"{g['gate']}: {'pass' if g['passed'] else 'FAIL'} ({g['detail']})"
            for g in herd["gates"]
        )
        rows.append(
            [
                record["campaign"],
                herd["herd"],
                herd["job"],
                herd["state"],
                herd["old_primary"],
                herd["new_primary"],
                herd["why"],
                herd["plan"],
                "" if herd["rto_seconds"] is None else f"{herd['rto_seconds']:.3f}",
                "" if herd["data_lost_bytes"] is None else herd["data_lost_bytes"],
                herd["data_lost_exact"],
                "" if herd["dns_cutover_seconds"] is None else f"{herd['dns_cutover_seconds']:.3f}",
                herd["dns_ok"],
                gates,
                herd["started_at"] or "",
                herd["finished_at"] or "",
                herd["outcome"],
                "; ".join(
                    f"#{a['job']} {a['state']}: {a['error']}" for a in herd["earlier_attempts"]
                ),
            ]
        )
    return rows
