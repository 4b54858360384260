//! The deployed template's operations side, held together: the dashboard body is valid JSON
//! once CloudFormation substitutes it, every alarm is on the dashboard, and every alarm's
//! description points at a runbook section that exists in `docs/operations.md`.

use std::collections::BTreeSet;

use serde_yaml::Value;

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alarm_is_on_the_dashboard_and_points_at_its_runbook() {
    let doc: Value = serde_yaml::from_str(tripflow_local::esm::TEMPLATE).unwrap();
    let resources = doc["Resources"].as_mapping().unwrap();
    let alarms: BTreeSet<String> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|(k, _)| k.as_str().unwrap().to_owned())
        .collect();
    assert!(alarms.len() >= 10, "{alarms:?}");

    let Value::Tagged(sub) = &resources["Dashboard"]["Properties"]["DashboardBody"] else {
        panic!("DashboardBody is not a !Sub");
    };
    let body = sub.value.as_str().unwrap();
    // Every ${…} is replaced by a string; what is left must be the JSON CloudWatch reads.
    let mut substituted = String::new();
    let mut rest = body;
    let mut referenced = BTreeSet::new();
    while let Some(i) = rest.find("${") {
        let end = rest[i..].find('}').unwrap() + i;
        referenced.insert(rest[i + 2..end].to_owned());
        substituted.push_str(&rest[..i]);
        substituted.push('X');
        rest = &rest[end + 1..];
    }
    substituted.push_str(rest);
    let json: serde_json::Value = serde_json::from_str(&substituted).unwrap();
    let widgets = json["widgets"].as_array().unwrap();
    assert!(widgets.iter().any(|w| w["type"] == "alarm"));
    for a in &alarms {
        assert!(
            referenced.contains(&format!("{a}.Arn")),
            "{a} is not on the dashboard's alarm widget"
        );
    }
    // Every resource the body names exists.
    for r in &referenced {
        let name = r.split('.').next().unwrap();
        assert!(
            name.starts_with("AWS::") || resources.contains_key(name),
            "the dashboard names {r}, which the template does not define"
        );
    }

    let runbook = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .map(anchor)
        .collect();
    for a in &alarms {
        let description = resources[a.as_str()]["Properties"]["AlarmDescription"]
            .as_str()
            .unwrap();
        let target = description
            .split("docs/operations.md#")
            .nth(1)
            .unwrap_or_else(|| panic!("{a}: no runbook link in {description:?}"));
        let target: String = target
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '-')
            .collect();
        assert!(
            anchors.contains(&target),
            "{a} points at #{target}, which docs/operations.md does not have ({anchors:?})"
        );
    }
}

/// The KPI state machine's permissions are what its runbook promises: its role may invoke the
/// KPI function and nothing else, and the hourly schedule starts the machine (SAM gives the
/// schedule's role `states:StartExecution` on this machine only), not the function.
#[test]
fn the_kpi_state_machine_may_invoke_only_the_kpi_function() {
    let doc: Value = serde_yaml::from_str(tripflow_local::esm::TEMPLATE).unwrap();
    let machine = &doc["Resources"]["KpiStateMachine"];
    assert_eq!(machine["Type"], "AWS::Serverless::StateMachine");
    let policies = machine["Properties"]["Policies"].as_sequence().unwrap();
    assert_eq!(policies.len(), 1, "{policies:?}");
    let statements = policies[0]["Statement"].as_sequence().unwrap();
    assert_eq!(statements.len(), 1);
    let statement = &statements[0];
    assert_eq!(statement["Effect"], "Allow");
    let actions: Vec<&str> = statement["Action"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(actions, ["lambda:InvokeFunction"]);
    for resource in statement["Resource"].as_sequence().unwrap() {
        let Value::Tagged(t) = resource else {
            panic!("{resource:?}")
        };
        let target = t.value.as_str().unwrap();
        assert!(
            target == "KpiFunction.Arn" || target == "${KpiFunction.Arn}:*",
            "the state machine may invoke {target}"
        );
    }
    let events = machine["Properties"]["Events"].as_mapping().unwrap();
    assert_eq!(events.len(), 1);
    let (_, schedule) = events.iter().next().unwrap();
    assert_eq!(schedule["Type"], "ScheduleV2");
    assert_eq!(schedule["Properties"]["ScheduleExpression"], "rate(1 hour)");
    assert!(
        doc["Resources"]["KpiFunction"]["Properties"]
            .get("Events")
            .is_none(),
        "the KPI function has a trigger of its own besides the state machine"
    );
}
