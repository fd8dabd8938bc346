//! `bhctl`'s output: aligned tables for people, JSON/YAML/names for scripts, and
//! the `describe` layout. Ages read like kubectl's (`45s`, `3m`, `2h`, `5d`).
//!
//! Text for people goes through [`blockhost_crd::sanitize`]: every table cell and
//! every free-text value in `describe` (labels, condition and event messages,
//! RPC errors, plan names) has its control characters and bidi overrides
//! escaped, so stored text cannot drive the terminal or forge lines. JSON and
//! YAML output keep the exact values.

use std::io::{self, Write};

use blockhost_crd::meta::{Condition, Event};
use blockhost_crd::sanitize::{Escaped, escape};
use blockhost_crd::{Plan, Subscription, VirtualMachine, VmSource};
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use serde_json::Value;

use crate::GetType;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// More columns.
    Wide,
    /// JSON (lists as `{"kind": "…List", "items": […]}`).
    Json,
    /// YAML.
    Yaml,
    /// `kind/name` per line.
    Name,
}

/// Prints a JSON value as JSON, YAML or names.
pub fn print_value(out: &mut impl Write, value: &Value, format: Format) -> io::Result<()> {
    match format {
        Format::Yaml => {
            let text = serde_saphyr::to_string(value).map_err(io::Error::other)?;
            out.write_all(text.as_bytes())
        }
        Format::Name => {
            let one = |v: &Value| {
                format!(
                    "{}/{}",
                    v["kind"].as_str().unwrap_or("?").to_lowercase(),
                    v["metadata"]["name"].as_str().unwrap_or("?")
                )
            };
            match value["items"].as_array() {
                Some(items) => items.iter().try_for_each(|v| writeln!(out, "{}", one(v))),
                None => writeln!(out, "{}", one(value)),
            }
        }
        _ => {
            // io::Error::from keeps the kind, so a closed pipe stays a BrokenPipe.
            serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
            writeln!(out)
        }
    }
}

/// Pretty-prints JSON text by streaming it through the formatter: no tree is built,
/// which keeps `get -o json` over thousands of objects fast.
pub fn pretty_json(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut ser = serde_json::Serializer::pretty(&mut *out);
    serde_transcode::transcode(&mut de, &mut ser).map_err(io::Error::from)?;
    writeln!(out)
}

/// Human age of a timestamp: `12s`, `5m`, `3h`, `2d`, `1y`.
pub fn age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let s = (now - t).num_seconds();
    if s < 0 {
        return format!("in {}", span(-s));
    }
    span(s)
}

fn span(s: i64) -> String {
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else if s < 172_800 {
        format!("{}h", s / 3600)
    } else if s < 31_536_000 {
        format!("{}d", s / 86400)
    } else {
        format!("{}y", s / 31_536_000)
    }
}

/// Column width used while watching: rows arrive one at a time, so widths cannot
/// be computed from all of them; this keeps typical names and values aligned
/// (the name column gets twice as much).
const WATCH_WIDTH: usize = 10;

/// Writes rows as aligned columns.
fn columns(out: &mut impl Write, rows: &[Vec<String>], header: bool) -> io::Result<()> {
    columns_min(out, rows, header, 0)
}

fn columns_min(
    out: &mut impl Write,
    rows: &[Vec<String>],
    header: bool,
    min: usize,
) -> io::Result<()> {
    // Escaped before measuring, so widths are those of what is printed.
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape(c)).collect())
        .collect();
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
                .max(if i == 1 { 2 * min } else { min })
        })
        .collect();
    for row in rows.iter().skip(usize::from(!header)) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell.as_ref());
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A table of VMs or plans from their JSON.
pub fn table(
    out: &mut impl Write,
    what: GetType,
    items: &[Value],
    wide: bool,
    now: DateTime<Utc>,
    header: bool,
) -> io::Result<()> {
    columns(out, &table_rows(what, items, wide, now), header)
}

/// One watch line (or the watch header when `event` is `None`), with an EVENT
/// column as kubectl's `--output-watch-events` prints.
pub fn watch_row(
    out: &mut impl Write,
    what: GetType,
    event: Option<&str>,
    item: &Value,
    wide: bool,
    now: DateTime<Utc>,
) -> io::Result<()> {
    let mut rows = table_rows(what, std::slice::from_ref(item), wide, now);
    rows[0].insert(0, "EVENT".into());
    rows[1].insert(0, event.unwrap_or_default().into());
    if event.is_none() {
        rows.truncate(1);
        return columns_min(out, &rows, true, WATCH_WIDTH);
    }
    columns_min(out, &rows, false, WATCH_WIDTH)
}

/// The header and one row per item, in the kind's columns.
fn table_rows(what: GetType, items: &[Value], wide: bool, now: DateTime<Utc>) -> Vec<Vec<String>> {
    let header = match what {
        GetType::Vms => vm_header(wide),
        GetType::Subscriptions => subscription_header(wide),
        GetType::Plans | GetType::Events => PLAN_HEADER.to_vec(),
    };
    let mut rows = Vec::with_capacity(items.len() + 1);
    rows.push(header.into_iter().map(String::from).collect());
    rows.extend(items.iter().map(|v| match what {
        GetType::Vms => vm_row(v, wide, now),
        GetType::Subscriptions => subscription_row(v, wide, now),
        GetType::Plans | GetType::Events => plan_row(v, now),
    }));
    rows
}

/// VM columns; `-o wide` adds where it runs, whose it is and why it is so.
fn vm_header(wide: bool) -> Vec<&'static str> {
    let mut h = vec![
        "NAME", "PHASE", "DESIRED", "NFT", "CPU", "MEMORY", "DISK", "AGE",
    ];
    if wide {
        h.extend(["NODE", "VMID", "IPV4", "IPV6", "OWNER", "EXPIRES", "REASON"]);
    }
    h
}

/// One VM's row, under [`vm_header`].
fn vm_row(v: &Value, wide: bool, now: DateTime<Utc>) -> Vec<String> {
    let sp = &v["spec"];
    let st = &v["status"];
    let mut row = vec![
        s(&v["metadata"]["name"]),
        if v["metadata"]["deletionTimestamp"].is_string() {
            "Terminating".into()
        } else {
            st["phase"].as_str().unwrap_or("Pending").into()
        },
        sp["powerState"].as_str().unwrap_or("Running").into(),
        // The access NFT's token id once minted; `-` for VMs
        // without one (operator VMs, or not minted yet).
        st["nftTokenId"]
            .as_u64()
            .map_or_else(|| "-".into(), |t| format!("#{t}")),
        s(&sp["resources"]["cores"]),
        format!("{}Mi", s(&sp["resources"]["memoryMiB"])),
        format!("{}Gi", s(&sp["resources"]["diskGiB"])),
        age(ts(&v["metadata"]["creationTimestamp"]), now),
    ];
    if wide {
        let reason = st["conditions"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .max_by_key(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            })
            .map(|c| s(&c["reason"]));
        row.extend([
            s(&st["node"]),
            s(&st["vmid"]),
            s(&st["addresses"]["ipv4"]),
            s(&st["addresses"]["ipv6"]),
            s(&sp["owner"]),
            ts(&sp["expiresAt"]).map_or("never".into(), |t| age(Some(t), now)),
            reason.unwrap_or_else(|| "<none>".into()),
        ]);
    }
    row
}

/// Subscription columns; `-o wide` adds the chain's bookkeeping.
fn subscription_header(wide: bool) -> Vec<&'static str> {
    let mut h = vec!["ID", "PLAN", "SUBSCRIBER", "EXPIRES", "VM", "STATE"];
    if wide {
        h.extend(["NAME", "BLOCK", "NFT", "REASON", "AGE"]);
    }
    h
}

/// One subscription's row, under [`subscription_header`].
fn subscription_row(v: &Value, wide: bool, now: DateTime<Utc>) -> Vec<String> {
    let sp = &v["spec"];
    let st = &v["status"];
    let expires = ts(&sp["expiresAt"]).map_or("<none>".into(), |t| {
        if t < now {
            format!("{} ago", age(Some(t), now))
        } else {
            format!("in {}", age(Some(now), t))
        }
    });
    let mut row = vec![
        s(&sp["subscriptionId"]),
        s(&sp["planId"]),
        s(&sp["subscriber"]),
        expires,
        st["vm"].as_str().unwrap_or("<none>").into(),
        st["state"].as_str().unwrap_or("Pending").into(),
    ];
    if wide {
        let reason = st["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["status"] == "False"))
            .map_or("<none>".into(), |c| s(&c["reason"]));
        row.extend([
            s(&v["metadata"]["name"]),
            s(&sp["blockNumber"]),
            st["nftTokenId"]
                .as_u64()
                .map_or("<none>".into(), |t| t.to_string()),
            reason,
            age(ts(&v["metadata"]["creationTimestamp"]), now),
        ]);
    }
    row
}

/// Plan columns (the same with `-o wide`: a plan has no more to show).
const PLAN_HEADER: [&str; 9] = [
    "NAME", "CHAIN-ID", "CPU", "MEMORY", "DISK", "TEMPLATE", "USD/DAY", "ACTIVE", "AGE",
];

/// One plan's row, under [`PLAN_HEADER`].
fn plan_row(v: &Value, now: DateTime<Utc>) -> Vec<String> {
    let sp = &v["spec"];
    let price = sp["pricePerDayUsdCents"]
        .as_u64()
        .map_or("<none>".into(), |c| format!("{}.{:02}", c / 100, c % 100));
    vec![
        s(&v["metadata"]["name"]),
        s(&sp["chainPlanId"]),
        s(&sp["resources"]["cores"]),
        format!("{}Mi", s(&sp["resources"]["memoryMiB"])),
        format!("{}Gi", s(&sp["resources"]["diskGiB"])),
        s(&sp["template"]),
        price,
        s(&sp["active"]),
        age(ts(&v["metadata"]["creationTimestamp"]), now),
    ]
}

/// A table of events.
pub fn events_table(
    out: &mut impl Write,
    events: &[Event],
    now: DateTime<Utc>,
    with_object: bool,
) -> io::Result<()> {
    if events.is_empty() {
        return writeln!(out, "No events.");
    }
    let mut rows = vec![];
    let mut h = vec!["AGE", "TYPE", "REASON"];
    if with_object {
        h.push("OBJECT");
    }
    h.push("MESSAGE");
    rows.push(h.into_iter().map(String::from).collect());
    for e in events {
        let mut row = vec![
            age(Some(e.time), now),
            format!("{:?}", e.type_),
            e.reason.clone(),
        ];
        if with_object {
            row.push(format!("{}/{}", e.kind.to_lowercase(), e.name));
        }
        row.push(e.message.clone());
        rows.push(row);
    }
    columns(out, &rows, true)
}

/// The closing sections of every `describe`: conditions, then recent events.
fn conditions_and_events(
    out: &mut impl Write,
    conditions: &[Condition],
    events: &[Event],
    now: DateTime<Utc>,
) -> io::Result<()> {
    writeln!(out, "Conditions:")?;
    conditions_table(out, conditions, now)?;
    writeln!(out, "Events:")?;
    indented_events(out, events, now)
}

/// `bhctl status`: the daemon's own conditions.
pub fn status_table(
    out: &mut impl Write,
    conditions: &[Condition],
    now: DateTime<Utc>,
) -> io::Result<()> {
    writeln!(out, "Conditions:")?;
    conditions_table(out, conditions, now)
}

fn conditions_table(
    out: &mut impl Write,
    conditions: &[Condition],
    now: DateTime<Utc>,
) -> io::Result<()> {
    if conditions.is_empty() {
        return writeln!(out, "  <none>");
    }
    let mut rows = vec![
        ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    for c in conditions {
        rows.push(vec![
            c.type_.clone(),
            format!("{:?}", c.status),
            c.reason.clone(),
            age(Some(c.last_transition_time), now),
            c.message.clone(),
        ]);
    }
    let mut buf = Vec::new();
    columns(&mut buf, &rows, true)?;
    for line in String::from_utf8_lossy(&buf).lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn meta_lines(
    out: &mut impl Write,
    m: &blockhost_crd::ObjectMeta,
    kind: &str,
    now: DateTime<Utc>,
) -> io::Result<()> {
    writeln!(out, "Name:              {}", m.name)?;
    writeln!(out, "Kind:              {kind}")?;
    let labels: Vec<String> = m
        .labels
        .iter()
        .map(|(k, v)| format!("{}={}", Escaped(k), Escaped(v)))
        .collect();
    writeln!(
        out,
        "Labels:            {}",
        if labels.is_empty() {
            "<none>".into()
        } else {
            labels.join(", ")
        }
    )?;
    writeln!(
        out,
        "UID:               {}",
        m.uid.as_deref().unwrap_or("<none>")
    )?;
    writeln!(
        out,
        "Created:           {} ({} ago)",
        m.creation_timestamp
            .map_or("<unknown>".into(), |t| t.to_rfc3339()),
        age(m.creation_timestamp, now)
    )?;
    if let Some(t) = m.deletion_timestamp {
        writeln!(
            out,
            "Deletion asked:    {} ({} ago)",
            t.to_rfc3339(),
            age(Some(t), now)
        )?;
    }
    writeln!(out, "Generation:        {}", m.generation.unwrap_or(0))?;
    writeln!(
        out,
        "Resource version:  {}",
        m.resource_version.unwrap_or(0)
    )?;
    if !m.finalizers.is_empty() {
        writeln!(
            out,
            "Finalizers:        {}",
            Escaped(&m.finalizers.join(", "))
        )?;
    }
    Ok(())
}

/// `bhctl describe vm`.
pub fn describe_vm(
    out: &mut impl Write,
    vm: &VirtualMachine,
    events: &[Event],
    now: DateTime<Utc>,
) -> io::Result<()> {
    meta_lines(out, &vm.metadata, "VirtualMachine", now)?;
    vm_spec_lines(out, &vm.spec, now)?;
    vm_status_lines(out, &vm.status)?;
    conditions_and_events(out, &vm.status.conditions, events, now)
}

/// The `Spec:` section of `describe vm`: what was asked for.
fn vm_spec_lines(
    out: &mut impl Write,
    sp: &blockhost_crd::VirtualMachineSpec,
    now: DateTime<Utc>,
) -> io::Result<()> {
    writeln!(out, "Spec:")?;
    writeln!(out, "  Owner:           {}", sp.owner)?;
    let source = match &sp.source {
        VmSource::Operator => "operator".to_string(),
        VmSource::Chain { subscription_id } => format!("chain subscription #{subscription_id}"),
    };
    writeln!(out, "  Source:          {source}")?;
    writeln!(
        out,
        "  Plan:            {}",
        sp.plan
            .as_ref()
            .map_or("<none>".into(), ToString::to_string)
    )?;
    writeln!(
        out,
        "  Resources:       {} cores, {} MiB memory, {} GiB disk",
        sp.resources.cores, sp.resources.memory_mib, sp.resources.disk_gib
    )?;
    writeln!(
        out,
        "  Template:        {}",
        sp.template
            .map_or("<plan or daemon default>".into(), |t| t.to_string())
    )?;
    writeln!(
        out,
        "  Expires:         {}",
        sp.expires_at.map_or("never".into(), |t| format!(
            "{} ({})",
            t.to_rfc3339(),
            age(Some(t), now)
        ))
    )?;
    writeln!(out, "  Power state:     {:?}", sp.power_state)?;
    writeln!(
        out,
        "  Network:         IPv4 {}, IPv6 {}",
        yes_no(sp.network.ipv4),
        yes_no(sp.network.ipv6)
    )?;
    writeln!(out, "  Guest user:      {}", sp.guest_user)?;
    writeln!(out, "  SSH keys:        {}", sp.ssh_keys.len())
}

/// The `Status:` section of `describe vm`: what the controllers observed.
fn vm_status_lines(
    out: &mut impl Write,
    st: &blockhost_crd::VirtualMachineStatus,
) -> io::Result<()> {
    writeln!(out, "Status:")?;
    writeln!(out, "  Phase:           {:?}", st.phase)?;
    writeln!(
        out,
        "  Observed gen.:   {}",
        st.observed_generation
            .map_or("<none>".into(), |g| g.to_string())
    )?;
    writeln!(
        out,
        "  Node:            {}",
        Escaped(st.node.as_deref().unwrap_or("<none>"))
    )?;
    writeln!(
        out,
        "  VMID:            {}",
        st.vmid.map_or("<none>".into(), |v| v.to_string())
    )?;
    writeln!(
        out,
        "  IPv4:            {}",
        st.addresses.ipv4.as_deref().unwrap_or("<none>")
    )?;
    writeln!(
        out,
        "  IPv6:            {}",
        st.addresses.ipv6.as_deref().unwrap_or("<none>")
    )?;
    writeln!(
        out,
        "  NFT token:       {}",
        st.nft_token_id.map_or("<none>".into(), |v| v.to_string())
    )?;
    if let Some(e) = &st.last_error {
        writeln!(out, "  Last error:      {}", Escaped(e))?;
    }
    Ok(())
}

/// `bhctl describe subscription`.
pub fn describe_subscription(
    out: &mut impl Write,
    sub: &Subscription,
    events: &[Event],
    now: DateTime<Utc>,
) -> io::Result<()> {
    meta_lines(out, &sub.metadata, "Subscription", now)?;
    let sp = &sub.spec;
    writeln!(out, "Spec (from the chain):")?;
    writeln!(out, "  Subscription id: {}", sp.subscription_id)?;
    writeln!(out, "  Plan id:         {}", sp.plan_id)?;
    writeln!(out, "  Subscriber:      {}", sp.subscriber)?;
    writeln!(out, "  Expires:         {}", sp.expires_at.to_rfc3339())?;
    writeln!(out, "  Cancelled:       {}", yes_no(sp.cancelled))?;
    writeln!(out, "  VM name:         {}", sp.vm_name)?;
    writeln!(out, "  Block:           {}", sp.block_number)?;
    writeln!(out, "  Transaction:     {}", sp.transaction_hash)?;
    let st = &sub.status;
    writeln!(out, "Status:")?;
    writeln!(out, "  State:           {:?}", st.state)?;
    writeln!(
        out,
        "  VM:              {}",
        st.vm.as_ref().map_or("<none>", |v| v.as_str())
    )?;
    writeln!(
        out,
        "  NFT token id:    {}",
        st.nft_token_id.map_or("<none>".into(), |t| t.to_string())
    )?;
    conditions_and_events(out, &st.conditions, events, now)
}

/// `bhctl describe plan`.
pub fn describe_plan(
    out: &mut impl Write,
    plan: &Plan,
    events: &[Event],
    now: DateTime<Utc>,
) -> io::Result<()> {
    meta_lines(out, &plan.metadata, "Plan", now)?;
    let sp = &plan.spec;
    writeln!(out, "Spec:")?;
    writeln!(
        out,
        "  Chain plan id:   {}",
        sp.chain_plan_id.map_or("<none>".into(), |v| v.to_string())
    )?;
    writeln!(
        out,
        "  Display name:    {}",
        Escaped(sp.display_name.as_deref().unwrap_or("<none>"))
    )?;
    writeln!(
        out,
        "  Resources:       {} cores, {} MiB memory, {} GiB disk",
        sp.resources.cores, sp.resources.memory_mib, sp.resources.disk_gib
    )?;
    writeln!(out, "  Template:        {}", sp.template)?;
    writeln!(
        out,
        "  Price per day:   {}",
        sp.price_per_day_usd_cents
            .map_or("<none>".into(), |c| format!(
                "USD {}.{:02}",
                c / 100,
                c % 100
            ))
    )?;
    writeln!(out, "  Active:          {}", yes_no(sp.active))?;
    writeln!(out, "Events:")?;
    indented_events(out, events, now)
}

fn indented_events(out: &mut impl Write, events: &[Event], now: DateTime<Utc>) -> io::Result<()> {
    let mut buf = Vec::new();
    events_table(&mut buf, events, now, false)?;
    for line in String::from_utf8_lossy(&buf).lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ages_read_like_kubectl() {
        let now = Utc.timestamp_opt(1_000_000_000, 0).single().unwrap();
        let ago = |s: i64| age(Some(now - chrono::Duration::seconds(s)), now);
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(300), "5m");
        assert_eq!(ago(3 * 3600), "3h");
        assert_eq!(ago(3 * 86400), "3d");
        assert_eq!(age(Some(now + chrono::Duration::days(29)), now), "in 29d");
        assert_eq!(age(None, now), "<unknown>");
    }

    #[test]
    fn a_hostile_rpc_error_in_a_condition_is_shown_escaped() {
        let now = Utc.timestamp_opt(1_000_000_000, 0).single().unwrap();
        // What a hostile node answered, stored verbatim in a condition and an event.
        let node_said =
            "execution reverted\u{1b}]0;owned\u{7}\u{1b}[2J\u{1b}[32mOK\r\nReady  True  Minted";
        let cond = Condition {
            type_: "NftMinted".into(),
            status: blockhost_crd::ConditionStatus::False,
            reason: "NodeError".into(),
            message: node_said.into(),
            last_transition_time: now,
        };
        let mut buf = Vec::new();
        conditions_table(&mut buf, &[cond], now).unwrap();
        let shown = String::from_utf8(buf).unwrap();
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\r'),
            "{shown:?}"
        );
        assert_eq!(shown.lines().count(), 2, "{shown}");
        assert!(
            shown.contains("execution reverted\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{1b}[32mOK\\r\\nReady  True  Minted"),
            "{shown}"
        );
    }

    #[test]
    fn columns_align() {
        let mut buf = Vec::new();
        columns(
            &mut buf,
            &[
                vec!["A".into(), "B".into()],
                vec!["long-name".into(), "x".into()],
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "A           B\nlong-name   x\n"
        );
    }
}
