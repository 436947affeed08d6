# ruff: noqa: E501  (HTML/JS/schema literals read better unwrapped)
"""Server-rendered HTML: every number is in the HTML (readable without JavaScript), no external assets.

CSS and the small script are served from the package (/static/app.css, /static/app.js) so that the
Content-Security-Policy can stay ``default-src 'self'`` (no inline script or style). Charts are inline
SVG generated here; the script redraws them with the same geometry (see :func:`chart_points`).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from keeper.api import format as fmt
from keeper.api import markdown
from keeper.api.explain import LAYER_ANCHOR, RULES
from keeper.api.state import PublicState, fund_display, market_json, stamp_json

RULES_MD = Path(__file__).resolve().parents[2] / "docs" / "risk-rules.md"
CHART_W, CHART_H, PAD = 600, 160, 6


def e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def layout(title: str, body: str, *, page: str = "", poll: float = 3.0, active: str = "") -> str:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == active else ""}>{label}</a>'
        for key, href, label in (
            ("fund", "/", "Insurance fund"),
            ("rules", "/rules", "Rules"),
            ("whales", "/whales", "Large holders"),
            ("account", "/account", "Account"),
            ("api", "/api/openapi.json", "API"),
        )
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · Zanbara</title>"
        '<link rel=stylesheet href="/static/app.css">'
        '<script src="/static/app.js" defer></script>'
        f'</head><body data-page="{e(page)}" data-poll="{poll:g}">'
        f'<header><div class="brand">Zanbara</div><nav>{nav}</nav></header>'
        f"<main>{body}</main>"
        "<footer>Every figure is read from chain state at the block shown and can be checked with "
        "<code>eth_call</code> at that block. Read-only; no cookies, no tracking.</footer>"
        "</body></html>"
    )


# ------------------------------------------------------------------------------------ charts


def chart_points(points: list[dict[str, Any]], key: str) -> tuple[str, str, str]:
    """(polyline points, min label, max label) of a series; same math as app.js's ``geometry``."""
    vals = [(p["t"], p[key]) for p in points if p.get(key) is not None]
    if not vals:
        return "", "", ""
    ts = [t for t, _ in vals]
    vs = [int(v) for _, v in vals]
    t0, t1 = min(ts), max(ts)
    v0, v1 = min(vs), max(vs)
    tspan = (t1 - t0) or 1
    vspan = (v1 - v0) or 1
    pts = []
    for t, v in zip(ts, vs, strict=True):
        x = PAD + (t - t0) * (CHART_W - 2 * PAD) / tspan
        y = CHART_H - PAD - (int(v) - v0) * (CHART_H - 2 * PAD) / vspan if v1 != v0 else CHART_H / 2
        pts.append(f"{x:.1f},{y:.1f}")
    label = (lambda v: fmt.usd(v, 0)) if key == "balance" else (lambda v: fmt.bps_pct(v))
    return " ".join(pts), label(v0), label(v1)


def chart(series: str, title: str, points: list[dict[str, Any]], rng: str) -> str:
    pts, lo, hi = chart_points(points, series)
    ranges = "".join(
        f'<a href="/?range={r}" data-range="{r}"{" class=on" if r == rng else ""}>{r}</a>'
        for r in ("hour", "day", "week")
    )
    return (
        f'<figure class="chart" data-series="{series}">'
        f"<figcaption>{e(title)} <span class=ranges>{ranges}</span></figcaption>"
        f'<svg id="chart-{series}" viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{e(title)} over the last {rng}" '
        f'preserveAspectRatio="none"><rect class="bg" x="0" y="0" width="{CHART_W}" height="{CHART_H}"/>'
        f'<polyline class="line" fill="none" stroke-width="2" points="{pts}"/></svg>'
        f'<div class="axis"><span data-axis="lo">{e(lo)}</span><span data-axis="hi">{e(hi)}</span>'
        f'<span data-axis="n">{len(points)} points</span></div></figure>'
    )


# ------------------------------------------------------------------------------------ pages


def _fig(key: str, label: str, value: str, note: str = "") -> str:
    return (
        f'<div class="card"><div class="label">{e(label)}</div>'
        f'<div class="value" data-k="{e(key)}">{e(value)}</div>'
        + (f'<div class="note">{note}</div>' if note else "")
        + "</div>"
    )


def index_page(
    st: PublicState, *, stale_after: float, poll: float, rng: str = "day", now: float | None = None
) -> str:
    if st.fund is None:
        body = "<h1>Insurance fund</h1><p class=empty>No snapshot has been published yet.</p>"
        return layout("Insurance fund", body, page="fund", poll=poll, active="fund")
    f = st.fund
    stamp = stamp_json(f, time.time() if now is None else now, stale_after)
    d = fund_display(f, stamp)
    stale_cls = "badge stale" if stamp["stale"] else "badge live"
    stamp_html = (
        '<p class="stamp">Read at block <strong data-k="stamp.block">{b}</strong> · hash '
        '<code class="hash" data-k="stamp.hash">{h}</code> · block time <span data-k="stamp.time">{t}</span> · '
        '<span data-k="stamp.age">{a}</span> <span id="stale" class="{c}" data-k="stamp.stale">{s}</span></p>'
    ).format(b=e(d["stamp.block"]), h=e(d["stamp.hash"]), t=e(d["stamp.time"]), a=e(d["stamp.age"]),
             c=stale_cls, s=e(d["stamp.stale"]))  # fmt: skip
    cards = "".join(
        [
            _fig("fund.balance", "Fund balance", d["fund.balance"], "InsuranceFund.balance()"),
            _fig("fund.tpv", "Total position value", d["fund.tpv"], "Σ |size| × mark, both sides"),
            _fig("fund.coverage", "Coverage ratio", d["fund.coverage"], "balance ÷ total position value"),
            _fig("fund.penalties24", "24h income: liquidations", d["fund.penalties24"], "fund's half of penalties"),
            _fig("fund.fees24", "24h income: fees", d["fund.fees24"], "0.02% of every trade"),
            _fig("fund.payouts24", "24h payouts (bad debt)", d["fund.payouts24"],
                 f'bad debt <span data-k="fund.baddebt24">{e(d["fund.baddebt24"])}</span>, socialized '
                 f'<span data-k="fund.socialized24">{e(d["fund.socialized24"])}</span>'),
        ]
    )  # fmt: skip
    partial = (
        ""
        if f["complete"]
        else '<p class="warn">A market\'s mark price was unavailable at this block: its positions count as 0.</p>'
    )
    index_note = (
        f'<p class="note">24-hour figures: block time (<span data-k="fund.window_from">{e(d["fund.window_from"])}</span>, '
        f'<span data-k="fund.window_to">{e(d["fund.window_to"])}</span>], from indexed events up to block '
        f'<span data-k="fund.index_block">{e(d["fund.index_block"])}</span>.</p>'
    )
    charts = (
        '<section class="charts">'
        + chart("balance", "Fund balance", st.history.get(rng, []), rng)
        + chart("coverage_bps", "Coverage ratio", st.history.get(rng, []), rng)
        + "</section>"
    )
    body = (
        "<h1>Insurance fund</h1>"
        + stamp_html
        + f'<section class="cards">{cards}</section>'
        + partial
        + index_note
        + charts
        + markets_section(st)
        + liquidations_section(st)
        + anomalies_section(st)
        + verify_section(st)
    )
    return layout("Insurance fund", body, page="fund", poll=poll, active="fund")


def markets_section(st: PublicState) -> str:
    rows = []
    for m in st.markets:
        d = market_json(m)["display"]
        k = f"m.{m['market_id']}."

        def sp(name: str, d: dict[str, str] = d, k: str = k) -> str:
            return f'<span data-k="{e(k + name)}">{e(d[k + name])}</span>'

        status_cls = {0: "ok", 1: "warn", 2: "bad"}.get(m["oracle_status"], "bad")
        rows.append(
            f"<tr><th scope=row>{e(m['symbol'])}</th><td>{sp('mark')}</td>"
            f'<td class="{status_cls}">{sp("oracle")}</td>'
            f"<td>{sp('oi_long')} / {sp('cap_long')} ({sp('use_long')})</td>"
            f"<td>{sp('oi_short')} / {sp('cap_short')} ({sp('use_short')})</td>"
            f"<td>{sp('funding_now')}</td><td>{sp('funding_next')}<br><small>due {sp('funding_due')}</small></td>"
            f"<td>{sp('breaker')}</td><td>{sp('adl')}</td></tr>"
        )
    return (
        '<section><h2 id="markets">Markets</h2><div class="table"><table class="markets"><thead><tr>'
        "<th>market</th><th>mark price</th><th>oracle</th><th>long OI / cap</th><th>short OI / cap</th>"
        "<th>funding (last)</th><th>funding (predicted)</th><th>circuit breaker</th><th>ADL</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def liquidations_section(st: PublicState) -> str:
    if not st.recent_liquidations:
        return '<section><h2 id="liquidations">Recent liquidations</h2><p class=empty>None yet.</p></section>'
    rows = "".join(
        f"<tr><td>{e(r['block_number'])}</td><td>{e(fmt.utc(r['block_timestamp']))}</td>"
        f'<td><a href="/account/{e(r["account"])}"><code>{e(r["account"][:10])}…</code></a></td>'
        f"<td>{e(st.symbols.get(int(r['market_id']), r['market_id']))}</td><td>{e(fmt.size(abs(r['size_closed'])))}</td>"
        f"<td>{e(fmt.price(r['price']))}</td><td>{e(fmt.usd(r['penalty']))}</td><td>{e(fmt.usd(r['fund_share']))}</td>"
        f"<td>{'full' if r['full'] else 'partial'}</td></tr>"
        for r in st.recent_liquidations
    )
    return (
        f'<section><h2 id="liquidations">Recent liquidations</h2><p class=note>{st.liquidations_total} in total '
        '(<a href="/api/liquidations">all, paged</a>).</p><div class="table"><table><thead><tr><th>block</th><th>time</th>'
        "<th>account</th><th>market</th><th>size closed</th><th>price</th><th>penalty</th><th>to fund</th><th>kind</th>"
        f"</tr></thead><tbody>{rows}</tbody></table></div></section>"
    )


def anomalies_section(st: PublicState) -> str:
    head = (
        '<section><h2 id="anomalies">Anomaly watch</h2><p class=note>Rule-based flags for review (large share '
        "of open interest, open/close loops, many accounts funded from one address, oracle jumps): the keeper "
        'never acts on them. <a href="/api/anomalies">All, paged</a>.</p>'
    )
    if not st.anomalies:
        return head + "<p class=empty>No anomaly flagged.</p></section>"
    rows = "".join(
        f"<tr><td>{e(r['block_number'])}</td><td>{e(r['rule'])}</td>"
        f"<td>{e(st.symbols.get(int(r['market_id']), r['market_id']) if r['market_id'] is not None else '')}</td>"
        f"<td><code>{e((r['account'] or r['subject'])[:14])}</code></td><td>{e(_anomaly_detail(r))}</td></tr>"
        for r in st.anomalies
    )
    return (
        head + f'<p class=note>{st.anomalies_total} in total.</p><div class="table"><table><thead><tr>'
        "<th>block</th><th>rule</th><th>market</th><th>who</th><th>detail</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div></section>"
    )


def _anomaly_detail(r: dict[str, Any]) -> str:
    d = r["detail"] or {}
    rule = r["rule"]
    if rule == "oi_share":
        return f"{int(d.get('share_bps', 0)) / 100:.1f}% of open interest in {d.get('window_blocks')} blocks"
    if rule == "open_close_loop":
        return f"{d.get('count')} opens/closes in {d.get('window_blocks')} blocks"
    if rule == "funding_source":
        return f"{d.get('accounts')} new accounts funded in {d.get('window_blocks')} blocks"
    if rule == "oracle_jump":
        return f"{float(d.get('return_bps', 0)) / 100:+.2f}% ({d.get('sigmas')}σ)"
    return ""


def verify_section(st: PublicState) -> str:
    f = st.fund
    assert f is not None
    return (
        '<section><h2 id="verify">Check it yourself</h2><p>With any RPC node of this chain: '
        f'<code>cast call {e(st.fund_address or "<InsuranceFund>")} "balance()(uint256)" --block <span data-k="stamp.block_plain">'
        f'{e(f["block_number"])}</span></code> returns <code data-k="fund.balance_raw">{e(f["balance"])}</code> '
        "(collateral units, 6 decimals). The JSON behind this page: "
        '<a href="/api/insurance-fund">/api/insurance-fund</a>, <a href="/api/markets">/api/markets</a>.</p></section>'
    )


def rules_page(st: PublicState, *, poll: float) -> str:
    text = (
        RULES_MD.read_text(encoding="utf-8") if RULES_MD.exists() else "# Rules\n\nThe rule book is missing."
    )
    inserts = live_inserts(st)
    body, used = markdown.render(text, anchors=RULES.keys(), inserts=inserts)
    rows = []
    for name, rule in RULES.items():
        rid = "" if name in used else f' id="{e(name)}"'
        rows.append(
            f'<tr{rid}><td><code>{e(name)}</code></td><td><a href="#{LAYER_ANCHOR[rule.layer]}">{e(rule.layer)}</a></td>'
            f"<td>{e(rule.summary)}</td></tr>"
        )
    errors = (
        '<h2 id="errors">Every rejection, by name</h2><p>Each custom error of the contracts, the layer it belongs to '
        'and the rule behind it. <code>/api/explain</code> answers with these names.</p><div class="table"><table>'
        "<thead><tr><th>error</th><th>layer</th><th>rule</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )
    return layout(
        "Rules", f'<article class="rules">{body}{errors}</article>', page="rules", poll=poll, active="rules"
    )


def live_inserts(st: PublicState) -> dict[str, str]:
    p = st.live_params()
    tiers = st.live_tiers()
    if not p and not tiers:
        return {}
    f = st.fund
    src = "indexed parameter events" if st.risk_params else "the contracts' views"
    at = f" at block {f['block_number']:,}" if f else ""
    head = f'<div class="live"><div class="live-h">Live values (from {e(src)}{e(at)})</div>'
    user = head + "<ul>" + "".join(
        f"<li>{e(t['name'])}: max leverage <strong>{e(t['max_leverage'])}x</strong>, max order "
        f"<strong>{e(fmt.usd(t['max_order_notional'], 0))}</strong></li>" for t in tiers
    )  # fmt: skip
    if "account_notional_cap" in p:
        user += f"<li>account notional cap: <strong>{e(fmt.usd(p['account_notional_cap'], 0))}</strong></li>"
    user += "</ul></div>"
    sysl = head + "<ul>"
    for m in st.markets:
        sysl += (f"<li>{e(m['symbol'])}: long cap <strong>{e(fmt.usd(m['long_oi_cap'], 0))}</strong>, short cap "
                 f"<strong>{e(fmt.usd(m['short_oi_cap'], 0))}</strong></li>")  # fmt: skip
    if "global_oi_cap" in p:
        sysl += f"<li>global cap (at entry): <strong>{e(fmt.usd(p['global_oi_cap'], 0))}</strong></li>"
    if "fund_fee_bps" in p:
        sysl += (f"<li>trading fee <strong>{e(fmt.bps_pct(p['trading_fee_bps']))}</strong>, of which to the fund "
                 f"<strong>{e(fmt.bps_pct(p['fund_fee_bps']))}</strong></li>")  # fmt: skip
    sysl += "</ul></div>"
    mkt = head + "<ul>"
    if "max_funding_rate_wad" in p:
        mkt += (f"<li>max funding rate <strong>{e(fmt.rate_pct(p['max_funding_rate_wad']))}</strong> per period of "
                f"<strong>{e(p['funding_period'])} s</strong></li>")  # fmt: skip
    for m in st.markets:
        mkt += f"<li>{e(m['symbol'])}: maintenance margin <strong>{e(fmt.bps_pct(m['mmr_bps']))}</strong>, oracle {e(fmt.ORACLE_STATUS[m['oracle_status']] if m['oracle_status'] < 3 else '?')}</li>"
    mkt += "</ul></div>"
    liq = head + "<ul>"
    if "liquidation_bps" in p:
        liq += (f"<li>liquidation line <strong>{e(fmt.bps_pct(p['liquidation_bps'], 0))}</strong>, target "
                f"<strong>{e(fmt.bps_pct(p['target_bps'], 0))}</strong>, penalty <strong>{e(fmt.bps_pct(p['penalty_bps']))}</strong>, "
                f"minimum remaining <strong>{e(fmt.usd(p['min_remaining_notional'], 0))}</strong></li>"
                f"<li>ADL trigger <strong>{e(fmt.bps_pct(p['adl_trigger_bps'], 0))}</strong>, target "
                f"<strong>{e(fmt.bps_pct(p['adl_target_bps'], 0))}</strong> of vault assets</li>")  # fmt: skip
    liq += "</ul></div>"
    return {"user-layer": user, "system-layer": sysl, "market-layer": mkt, "liquidation": liq}


def whales_page(doc: dict[str, Any], *, poll: float) -> str:
    if not doc["markets"]:
        body = "<h1>Large holders</h1><p class=empty>No whale snapshot yet (taken hourly).</p>"
        return layout("Large holders", body, page="whales", poll=poll, active="whales")
    parts = [
        "<h1>Large holders</h1>",
        f"<p class=stamp>Hourly snapshot at block <strong>{e(doc['block_number'])}</strong>, block time "
        f"{e(fmt.utc(doc['taken_at']))}. Accounts are anonymized (salted hash, truncated): ids are stable between "
        "snapshots but do not reveal addresses.</p>",
    ]
    for m in doc["markets"]:
        rows = "".join(
            f"<tr><td>{p['rank']}</td><td><code>{e(p['id'])}</code></td><td>{e(p['side'])}</td>"
            f"<td>{e(fmt.usd(int(p['notional']['raw']), 0))}</td><td>{e(fmt.bps_pct(p['share_bps']))}</td><td>{e(p['band'])}</td></tr>"
            for p in m["positions"]
        )
        bands = "".join(
            f"<tr><td>{e(b)}</td><td>{v['count']}</td><td>{e(fmt.usd(int(v['long']['raw']), 0))}</td>"
            f"<td>{e(fmt.usd(int(v['short']['raw']), 0))}</td></tr>"
            for b, v in m["bands"].items()
        )
        parts.append(
            f"<section><h2>{e(m['symbol'] or m['market_id'])}</h2><p>Top positions hold "
            f"{e(fmt.bps_pct(m['long_share_bps']))} (long) and {e(fmt.bps_pct(m['short_share_bps']))} (short) of open interest.</p>"
            f'<div class="table"><table><thead><tr><th>#</th><th>id</th><th>side</th><th>notional</th><th>share of OI</th>'
            f"<th>band</th></tr></thead><tbody>{rows}</tbody></table></div>"
            f'<div class="table"><table><thead><tr><th>size band</th><th>positions</th><th>long</th><th>short</th></tr></thead>'
            f"<tbody>{bands}</tbody></table></div></section>"
        )
    return layout("Large holders", "".join(parts), page="whales", poll=poll, active="whales")


def account_form(*, poll: float, error: str | None = None) -> str:
    err = f'<p class="warn">{e(error)}</p>' if error else ""
    body = (
        "<h1>Account</h1>" + err + '<form method="get" action="/account"><label for=address>Address</label> '
        "<input id=address name=address inputmode=text autocomplete=off spellcheck=false maxlength=42 "
        'placeholder="0x…" required> <button type=submit>Show</button></form>'
    )
    return layout("Account", body, page="account", poll=poll, active="account")


def account_page(doc: dict[str, Any], *, poll: float) -> str:
    parts = [f"<h1>Account <code class=hash>{e(doc['address'])}</code></h1>"]
    if doc.get("stamp"):
        parts.append(f"<p class=stamp>Marks of block <strong>{e(doc['stamp']['block_number'])}</strong>; positions and "
                     "collateral from the index.</p>")  # fmt: skip
    if not doc["known"]:
        parts.append("<p class=empty>This account has no activity on the exchange.</p>")
    lim = doc.get("limits")
    parts.append(
        '<section class="cards">'
        + _fig("a.collateral", "Collateral", fmt.usd(int(doc["collateral"]["raw"])))
        + _fig("a.tier", "Tier", f"{doc['tier']} ({doc['trades']} trades)",
               (f"max {lim['max_leverage']}x, max order {e(fmt.usd(int(lim['max_order_notional']['raw']), 0))}" if lim else ""))
    )  # fmt: skip
    risk = doc.get("risk")
    if risk:
        mr = risk["margin_ratio_bps"]
        parts.append(
            _fig("a.value", "Account value", fmt.usd(int(risk["account_value"]["raw"])))
            + _fig("a.mm", "Maintenance margin", fmt.usd(int(risk["maintenance_margin"]["raw"])))
            + _fig("a.mr", "Margin ratio", "∞ (no positions)" if mr is None else fmt.bps_pct(mr))
            + _fig(
                "a.warning",
                "Warning tier",
                risk["warning"],
                '<a href="/rules#liquidation">what the tiers mean</a>',
            )
        )
    parts.append("</section>")
    if doc.get("note"):
        parts.append(f'<p class="warn">{e(doc["note"])}</p>')
    if doc["positions"]:
        rows = "".join(
            f"<tr><td>{e(p.get('symbol') or p['market_id'])}</td><td>{e(p.get('side', ''))}</td>"
            f"<td>{e(fmt.size(abs(int(p['size']))))}</td><td>{e(fmt.price(int(p['entry_price'])))}</td>"
            f"<td>{e(fmt.price(int(p['mark_price'])) if p.get('mark_price') else 'n/a')}</td>"
            f"<td>{e(fmt.usd(int(p['unrealized_pnl']['raw'])) if p.get('unrealized_pnl') else 'n/a')}</td>"
            f"<td>{e(fmt.price(int(p['liquidation_price'])) if p.get('liquidation_price') else 'none')}</td></tr>"
            for p in doc["positions"]
        )
        parts.append(
            '<section><h2>Positions</h2><div class="table"><table><thead><tr><th>market</th><th>side</th><th>size</th>'
            "<th>entry</th><th>mark</th><th>unrealized PnL</th><th>liquidation price</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div></section>"
        )
    return layout("Account", "".join(parts), page="account", poll=poll, active="account")


def error_page(status: int, message: str) -> str:
    return layout(f"{status}", f"<h1>{status}</h1><p>{e(message)}</p>")
