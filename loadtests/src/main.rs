//! `wsload`: the gateway's load generator (scenarios arrive with the load-test issue).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("wsload has no scenarios yet")
}
