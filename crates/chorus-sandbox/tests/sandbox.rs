//! Behaviour of the sandbox through its public API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_sandbox::{
    Call, Failure, Kv, LOGS_TRUNCATED, Limits, MAX_LOG_LINE_CHARS, MAX_LOG_LINES, Outcome,
    RunError, Sandbox, SandboxConfig,
};
use serde_json::{Value, json};

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        threads: 2,
        ..SandboxConfig::default()
    })
}

/// A call with the default limits, except a CPU budget far above what the test scripts
/// need: the budget is wall-clock time on the sandbox thread, and a loaded machine must
/// not make an ordinary call time out.
fn call(key: &str, source: &str, function: &str, args: Vec<Value>) -> Call {
    Call {
        owner: "ada".to_owned(),
        key: key.to_owned(),
        source: Arc::from(source),
        function: function.to_owned(),
        args,
        with_ctx: true,
        kv: None,
        limits: Limits {
            cpu: Duration::from_millis(200),
            ..Limits::default()
        },
        max_output_bytes: 64 << 10,
    }
}

/// Calls `function` of `source` with no arguments but `ctx`, on a key of its own.
async fn run(source: &str, function: &str) -> Result<Outcome, Failure> {
    sandbox().call(call("test", source, function, vec![])).await
}

async fn value(source: &str) -> Value {
    run(source, "f").await.expect("the call succeeds").value
}

async fn error(source: &str) -> RunError {
    run(source, "f").await.expect_err("the call fails").error
}

/// A store in a map that the test can look into.
#[derive(Clone, Default)]
struct MapKv(Arc<Mutex<HashMap<String, Value>>>);

impl Kv for MapKv {
    fn get(&mut self, key: &str, _: Instant) -> Result<Option<Value>, String> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn set(&mut self, key: &str, value: Value, _: Instant) -> Result<(), String> {
        self.0.lock().unwrap().insert(key.to_owned(), value);
        Ok(())
    }
    fn delete(&mut self, key: &str, _: Instant) -> Result<(), String> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
}

/// A store that always fails.
struct BrokenKv;

impl Kv for BrokenKv {
    fn get(&mut self, _: &str, _: Instant) -> Result<Option<Value>, String> {
        Err("store is down".to_owned())
    }
    fn set(&mut self, _: &str, _: Value, _: Instant) -> Result<(), String> {
        Err("store is down".to_owned())
    }
    fn delete(&mut self, _: &str, _: Instant) -> Result<(), String> {
        Err("store is down".to_owned())
    }
}

/// A store that takes a while to answer each `get`, or until the deadline if that comes
/// first, as the contract asks: a slow database.
#[derive(Clone, Default)]
struct SlowKv {
    delay: Duration,
    /// `get`s answered.
    gets: Arc<Mutex<u32>>,
}

impl SlowKv {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            gets: Arc::default(),
        }
    }
}

impl Kv for SlowKv {
    fn get(&mut self, _: &str, deadline: Instant) -> Result<Option<Value>, String> {
        let now = Instant::now();
        // Sleeping is the point here: this is the slow store, not a wait for an event.
        std::thread::sleep(self.delay.min(deadline.saturating_duration_since(now)));
        *self.gets.lock().unwrap() += 1;
        Ok(Some(json!("slow")))
    }
    fn set(&mut self, _: &str, _: Value, _: Instant) -> Result<(), String> {
        Ok(())
    }
    fn delete(&mut self, _: &str, _: Instant) -> Result<(), String> {
        Ok(())
    }
}

const COUNTER: &str = "let count = 0; export function f() { count += 1; return count; }";

#[tokio::test]
async fn a_hook_gets_its_arguments_and_returns_an_action() {
    let source = r#"
        export function onIncoming(msg, ctx) {
            return { reply: msg.text + "!", n: msg.n * 2, tags: msg.tags, nested: msg.deep.a.b };
        }"#;
    let msg = json!({"text": "hello", "n": 21, "tags": ["x", "y"], "deep": {"a": {"b": [1.5, null, true]}}});
    let outcome = sandbox()
        .call(call("hook", source, "onIncoming", vec![msg]))
        .await
        .unwrap();
    assert_eq!(
        outcome.value,
        json!({"reply": "hello!", "n": 42, "tags": ["x", "y"], "nested": [1.5, null, true]})
    );
    assert!(outcome.logs.is_empty());
}

#[tokio::test]
async fn arguments_keep_deep_nesting_big_numbers_and_proto_keys() {
    let mut deep = json!("bottom");
    for _ in 0..100 {
        deep = json!({ "next": deep });
    }
    let source = r#"
        export function f(deep, big, odd) {
            let depth = 0;
            while (typeof deep === "object") { deep = deep.next; depth++; }
            return { depth, bottom: deep, big, own: Object.keys(odd), proto: Object.getPrototypeOf(odd) === Object.prototype };
        }"#;
    let odd: Value = serde_json::from_str(r#"{"__proto__": {"polluted": true}}"#).unwrap();
    let mut c = call("args", source, "f", vec![deep, json!(1e300), odd]);
    c.with_ctx = false;
    let outcome = sandbox().call(c).await.unwrap();
    assert_eq!(
        outcome.value,
        json!({"depth": 100, "bottom": "bottom", "big": 1e300, "own": ["__proto__"], "proto": true})
    );
}

#[tokio::test]
async fn undefined_is_returned_as_null() {
    assert_eq!(value("export function f() {}").await, Value::Null);
}

#[tokio::test]
async fn without_ctx_only_the_given_arguments_are_passed() {
    let source = "export function f(...args) { return args.length; }";
    let mut c = call("k", source, "f", vec![json!(1), json!(2)]);
    c.with_ctx = false;
    assert_eq!(sandbox().call(c).await.unwrap().value, json!(2));
    let c = call("k", source, "f", vec![json!(1), json!(2)]);
    assert_eq!(sandbox().call(c).await.unwrap().value, json!(3));
}

#[tokio::test]
async fn logs_are_captured() {
    let source = r#"export function f(_, ctx) {
        ctx.log("text", 1, { b: 2 }, [1], null, undefined, true, Symbol("s"), new Error("e"), () => 1);
        ctx.log();
    }"#;
    let outcome = sandbox()
        .call(call("logs", source, "f", vec![json!(null)]))
        .await
        .unwrap();
    assert_eq!(
        outcome.logs,
        vec![
            r#"text 1 {"b":2} [1] null undefined true Symbol(s) Error: e [function]"#.to_owned(),
            String::new(),
        ]
    );
}

#[tokio::test]
async fn logs_are_bounded() {
    let source = r#"export function f(ctx) {
        ctx.log("x".repeat(5000));
        for (let i = 0; i < 500; i++) ctx.log("line", i);
    }"#;
    let c = call("logs", source, "f", vec![]);
    let outcome = sandbox().call(c).await.unwrap();
    assert_eq!(outcome.logs.len(), MAX_LOG_LINES + 1);
    assert_eq!(outcome.logs[0], "x".repeat(MAX_LOG_LINE_CHARS));
    assert_eq!(outcome.logs[1], "line 0");
    assert_eq!(outcome.logs[MAX_LOG_LINES - 1], "line 98");
    assert_eq!(outcome.logs[MAX_LOG_LINES], LOGS_TRUNCATED);
}

#[tokio::test]
async fn logs_are_kept_when_the_call_fails() {
    let failure = error_with_logs(
        r#"export function f(ctx) { ctx.log("before"); throw new Error("after"); }"#,
    )
    .await;
    assert_eq!(failure.logs, vec!["before".to_owned()]);
    assert_eq!(failure.error, RunError::Thrown("Error: after".to_owned()));
}

async fn error_with_logs(source: &str) -> Failure {
    run(source, "f").await.unwrap_err()
}

#[tokio::test]
async fn kv_gets_sets_and_deletes() {
    let store = MapKv::default();
    store
        .0
        .lock()
        .unwrap()
        .insert("seen".to_owned(), json!({"n": 1}));
    let source = r#"export function f(ctx) {
        const before = ctx.kv.get("seen");
        ctx.kv.set("seen", { n: before.n + 1, list: [1, "two"] });
        ctx.kv.set("gone", true);
        ctx.kv.delete("gone");
        return { before, after: ctx.kv.get("seen"), missing: ctx.kv.get("nothing"), gone: ctx.kv.get("gone") };
    }"#;
    let mut c = call("kv", source, "f", vec![]);
    c.kv = Some(Box::new(store.clone()));
    let outcome = sandbox().call(c).await.unwrap();
    assert_eq!(
        outcome.value,
        json!({"before": {"n": 1}, "after": {"n": 2, "list": [1, "two"]}, "missing": null, "gone": null})
    );
    let map = store.0.lock().unwrap();
    assert_eq!(map.get("seen"), Some(&json!({"n": 2, "list": [1, "two"]})));
    assert!(!map.contains_key("gone"));
}

#[tokio::test]
async fn kv_errors_are_catchable_exceptions() {
    let source = r#"export function f(ctx) {
        const caught = [];
        for (const attempt of [() => ctx.kv.get("a"), () => ctx.kv.set("a", 1), () => ctx.kv.delete("a"),
                               () => ctx.kv.get(42), () => ctx.kv.set("a", () => 1)]) {
            try { attempt(); } catch (e) { caught.push(String(e)); }
        }
        return caught;
    }"#;
    let mut c = call("kv", source, "f", vec![]);
    c.kv = Some(Box::new(BrokenKv));
    let outcome = sandbox().call(c).await.unwrap();
    assert_eq!(
        outcome.value,
        json!([
            "Error: store is down",
            "Error: store is down",
            "Error: store is down",
            "TypeError: kv keys must be strings",
            "TypeError: a function is not JSON-representable"
        ])
    );
}

#[tokio::test]
async fn kv_without_a_store_throws() {
    let source = r#"export function f(ctx) {
        try { ctx.kv.get("a"); } catch (e) { return String(e); }
    }"#;
    assert_eq!(value(source).await, json!("Error: kv is not available"));
    let uncaught = r#"export function f(ctx) { ctx.kv.set("a", 1); }"#;
    assert_eq!(
        error(uncaught).await,
        RunError::Thrown("Error: kv is not available".to_owned())
    );
}

#[tokio::test]
async fn time_in_kv_calls_is_not_counted_up_to_the_allowance() {
    // Counted, the three answers would take more than twice the budget.
    let source =
        r#"export function f(ctx) { return [ctx.kv.get("a"), ctx.kv.get("b"), ctx.kv.get("c")]; }"#;
    let mut c = call("kv", source, "f", vec![]);
    c.limits.cpu = Duration::from_millis(50);
    c.limits.kv_time = Duration::from_secs(5);
    c.kv = Some(Box::new(SlowKv::new(Duration::from_millis(40))));
    assert_eq!(
        sandbox().call(c).await.unwrap().value,
        json!(["slow", "slow", "slow"])
    );
}

#[tokio::test]
async fn a_script_looping_on_a_slow_store_ends_by_the_wall_clock_cap() {
    // The attack of issue 23: host time used to move the deadline without bound, so
    // this loop ran for as long as the store answered.
    let source = r#"export function f(ctx) {
        for (;;) { try { ctx.kv.get("k"); } catch (e) { ctx.log(String(e)); } }
    }"#;
    let mut c = call("kv", source, "f", vec![]);
    c.limits.cpu = Duration::from_millis(10);
    c.limits.kv_time = Duration::from_millis(100);
    c.limits.kv_calls = u32::MAX;
    let store = SlowKv::new(Duration::from_millis(5));
    c.kv = Some(Box::new(store.clone()));
    let sandbox = sandbox();
    let failure = sandbox.call(c).await.unwrap_err();
    assert_eq!(failure.error, RunError::Timeout);
    assert_eq!(failure.error.code(), "timeout");
    // The cap is 110 ms; the margin is for a loaded machine, far below the seconds the
    // loop ran before.
    assert!(
        failure.elapsed < Duration::from_millis(110 + 400),
        "{:?}",
        failure.elapsed
    );
    // At most 110 ms / 5 ms, the last one cut short by the deadline.
    let gets = *store.gets.lock().unwrap();
    assert!((1..=23).contains(&gets), "{gets} gets");
    // The refused call threw; catching it did not let the loop go on for long.
    assert_eq!(failure.logs[0], "Error: out of time");
    assert_eq!(sandbox.pooled().0, 0, "the stopped instance is dropped");
}

#[tokio::test]
async fn a_pure_cpu_loop_still_ends_at_the_cpu_budget() {
    let mut c = call("loop", "export function f() { for (;;) {} }", "f", vec![]);
    c.limits.cpu = Duration::from_millis(20);
    c.limits.kv_time = Duration::from_secs(60);
    let failure = sandbox().call(c).await.unwrap_err();
    assert_eq!(failure.error, RunError::Timeout);
    assert!(
        failure.elapsed < Duration::from_secs(1),
        "{:?}",
        failure.elapsed
    );
}

#[tokio::test]
async fn the_kv_call_past_the_limit_throws_and_fails_the_run() {
    let source = r#"export function f(ctx) {
        let answered = 0;
        for (let i = 0; i < 20; i++) {
            try { ctx.kv.get("k"); answered += 1; } catch (e) { ctx.log(String(e)); }
        }
        return answered;
    }"#;
    let mut c = call("kv", source, "f", vec![]);
    c.limits.kv_calls = 10;
    let store = SlowKv::new(Duration::ZERO);
    c.kv = Some(Box::new(store.clone()));
    let sandbox = sandbox();
    let failure = sandbox.call(c).await.unwrap_err();
    assert_eq!(failure.error, RunError::KvCalls { max: 10 });
    assert_eq!(failure.error.code(), "kv_calls");
    assert_eq!(
        failure.error.to_string(),
        "the script made more than 10 ctx.kv calls"
    );
    assert_eq!(*store.gets.lock().unwrap(), 10, "the store saw 10 calls");
    // Caught, the refusal did not let the script finish with a value; it may have
    // logged it a few times before the interrupt handler stopped it.
    assert_eq!(
        failure.logs[0],
        "Error: more than 10 ctx.kv calls in one run"
    );
    assert_eq!(sandbox.pooled().0, 0, "the stopped instance is dropped");
}

#[tokio::test]
async fn ctx_now_is_the_time_in_milliseconds_and_ctx_is_frozen() {
    let source = r#"export function f(ctx) {
        const replaced = [Reflect.set(ctx, "log", null), Reflect.set(ctx.kv, "get", null)];
        return [ctx.now(), Object.isFrozen(ctx), typeof ctx.log, typeof ctx.kv.get, replaced];
    }"#;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let result = value(source).await;
    let now = result[0].as_f64().unwrap();
    assert!(now >= before.floor() && now < before + 3_600_000.0);
    assert_eq!(
        result.as_array().unwrap()[1..],
        [
            json!(true),
            json!("function"),
            json!("function"),
            json!([false, false])
        ]
    );
}

#[tokio::test]
async fn module_state_survives_across_calls_on_one_key_only() {
    let sandbox = sandbox();
    for expected in 1..=3 {
        let outcome = sandbox.call(call("a", COUNTER, "f", vec![])).await.unwrap();
        assert_eq!(outcome.value, json!(expected));
    }
    let other = sandbox.call(call("b", COUNTER, "f", vec![])).await.unwrap();
    assert_eq!(other.value, json!(1));
    assert_eq!(sandbox.pooled().0, 2);
}

#[tokio::test]
async fn a_thrown_error_keeps_the_instance() {
    let sandbox = sandbox();
    let source = "let count = 0; export function f(fail) { count += 1; if (fail) throw new Error(`no ${count}`); return count; }";
    let go = |fail: bool| call("thrower", source, "f", vec![json!(fail)]);
    assert_eq!(sandbox.call(go(false)).await.unwrap().value, json!(1));
    assert_eq!(
        sandbox.call(go(true)).await.unwrap_err().error,
        RunError::Thrown("Error: no 2".to_owned())
    );
    assert_eq!(sandbox.call(go(false)).await.unwrap().value, json!(3));
}

#[tokio::test]
async fn a_changed_source_under_the_same_key_gets_a_fresh_instance() {
    let sandbox = sandbox();
    sandbox.call(call("k", COUNTER, "f", vec![])).await.unwrap();
    let changed = "export function f() { return 'changed'; }";
    let outcome = sandbox.call(call("k", changed, "f", vec![])).await.unwrap();
    assert_eq!(outcome.value, json!("changed"));
}

#[tokio::test]
async fn compile_errors_have_a_line_and_column() {
    let source = "let a = 1;\n\nlet b = ;\nexport function f() {}";
    let RunError::Compile {
        message,
        line,
        column,
    } = error(source).await
    else {
        panic!("not a compile error");
    };
    assert!(message.starts_with("SyntaxError: "), "{message}");
    assert_eq!((line, column), (Some(3), Some(9)));

    let checked = sandbox().check(source).await.unwrap_err();
    assert!(
        matches!(checked, RunError::Compile { line: Some(3), .. }),
        "{checked:?}"
    );
    assert_eq!(checked.code(), "compile");
}

#[tokio::test]
async fn top_level_throws_and_timeouts_fail_the_load() {
    let thrown = error("throw new TypeError('bad start'); export function f() {}").await;
    assert!(
        matches!(&thrown, RunError::Compile { message, line: Some(1), .. } if message == "TypeError: bad start"),
        "{thrown:?}"
    );
    let looping = "for (;;) {} export function f() {}";
    assert_eq!(error(looping).await, RunError::Timeout);
    assert_eq!(sandbox().check(looping).await, Err(RunError::Timeout));
    let bomb = "let a = []; for (;;) a.push(new Array(1e5).fill(1)); export function f() {}";
    assert_eq!(sandbox().check(bomb).await, Err(RunError::OutOfMemory));
}

#[tokio::test]
async fn check_lists_the_exported_functions() {
    let source = r#"
        export function onOutgoing() {}
        export const onIncoming = (msg) => msg;
        export async function main() {}
        export const version = 3;
        export default function () {}
        function helper() {}"#;
    assert_eq!(
        sandbox().check(source).await.unwrap(),
        vec!["default", "main", "onIncoming", "onOutgoing"]
    );
}

#[tokio::test]
async fn a_missing_function_is_reported() {
    let source = "export const f = 1; export function g() {}";
    assert_eq!(
        run(source, "onIncoming").await.unwrap_err().error,
        RunError::Missing("onIncoming".to_owned())
    );
    assert_eq!(error(source).await, RunError::Missing("f".to_owned()));
    assert_eq!(RunError::Missing(String::new()).code(), "missing");
}

#[tokio::test]
async fn thrown_errors_read_like_string_of_the_error() {
    assert_eq!(
        error("export function f() { throw new TypeError('boom'); }").await,
        RunError::Thrown("TypeError: boom".to_owned())
    );
    assert_eq!(
        error("export function f() { const x = 1; x(); }").await,
        RunError::Thrown("TypeError: not a function".to_owned())
    );
    let custom = "class Nope extends Error { constructor() { super('custom'); this.name = 'Nope'; } toString() { throw 1; } }
                  export function f() { throw new Nope(); }";
    assert_eq!(
        error(custom).await,
        RunError::Thrown("Nope: custom".to_owned())
    );
    let rejected = "export async function f() { await null; throw new RangeError('later'); }";
    assert_eq!(
        error(rejected).await,
        RunError::Thrown("RangeError: later".to_owned())
    );
}

#[tokio::test]
async fn thrown_values_that_are_not_errors_are_described() {
    let cases = [
        ("42", "42"),
        ("null", "null"),
        ("undefined", "undefined"),
        ("'plain'", "plain"),
        ("({ a: 1 })", r#"{"a":1}"#),
        ("Symbol('why')", "Symbol(why)"),
        ("Symbol()", "Symbol()"),
        ("10n", "10"),
        ("({ toString() { throw new Error('no'); } })", "{}"),
        ("({ toJSON() { throw new Error('no'); } })", "[object]"),
        ("(() => { const o = {}; o.o = o; return o; })()", "[object]"),
        ("function g() {}", "[function]"),
        ("'x'.repeat(5000)", &format!("{}…", "x".repeat(1000))),
    ];
    let sandbox = sandbox();
    for (thrown, expected) in cases {
        let source = format!("export function f() {{ throw {thrown}; }}");
        let failure = sandbox
            .call(call(thrown, &source, "f", vec![]))
            .await
            .unwrap_err();
        assert_eq!(
            failure.error,
            RunError::Thrown(expected.to_owned()),
            "throw {thrown}"
        );
        assert_eq!(failure.error.code(), "thrown");
    }
}

#[tokio::test]
async fn an_infinite_loop_times_out() {
    let failure = error("export function f() { for (;;) {} }").await;
    assert_eq!(failure, RunError::Timeout);
    assert_eq!(failure.code(), "timeout");
}

#[tokio::test]
async fn a_loop_around_try_catch_times_out() {
    let source = "export function f() { for (;;) { try { while (true) {} } catch (e) {} finally { continue; } } }";
    assert_eq!(error(source).await, RunError::Timeout);
}

#[tokio::test]
async fn an_endless_chain_of_promise_jobs_times_out() {
    let source = "export async function f() { for (;;) { try { await null; } catch (e) {} } }";
    assert_eq!(error(source).await, RunError::Timeout);
    let detached = "export function f() { (async () => { for (;;) await null; })(); return 1; }";
    assert_eq!(error(detached).await, RunError::Timeout);
}

#[tokio::test]
async fn a_catastrophic_regex_times_out() {
    let source = r#"export function f() { return /(a+)+$/.test("a".repeat(40) + "b"); }"#;
    assert_eq!(error(source).await, RunError::Timeout);
}

#[tokio::test]
async fn a_memory_bomb_runs_out_of_memory() {
    let source = "export function f() { let a = []; for (;;) a.push(new Array(1e5).fill(1)); }";
    let failure = error(source).await;
    assert_eq!(failure, RunError::OutOfMemory);
    assert_eq!(failure.code(), "out_of_memory");
    let caught = "export function f() { let a = []; try { for (;;) a.push(new Array(1e5).fill(1)); } catch (e) { a = null; for (;;) {} } }";
    assert_eq!(error(caught).await, RunError::Timeout);
}

#[tokio::test]
async fn deep_recursion_is_a_clean_error() {
    let source = "function r(n) { return r(n + 1) + 1; } export function f() { return r(0); }";
    assert_eq!(
        error(source).await,
        RunError::Thrown("RangeError: Maximum call stack size exceeded".to_owned())
    );
}

#[tokio::test]
async fn the_same_key_works_again_after_each_limit() {
    let source = r#"
        let count = 0;
        export function f(what) {
            count += 1;
            if (what === "loop") for (;;) {}
            if (what === "bomb") { let a = []; for (;;) a.push(new Array(1e5).fill(1)); }
            if (what === "regex") return /(a+)+$/.test("a".repeat(40) + "b");
            if (what === "recurse") { const r = (n) => r(n + 1) + 1; return r(0); }
            if (what === "throw") throw new Error("thrown");
            return count;
        }"#;
    let sandbox = sandbox();
    let go = |what: &str| {
        let mut c = call("limits", source, "f", vec![json!(what)]);
        c.with_ctx = false;
        c
    };
    assert_eq!(sandbox.call(go("count")).await.unwrap().value, json!(1));
    assert_eq!(sandbox.call(go("count")).await.unwrap().value, json!(2));
    let limits = [
        ("loop", RunError::Timeout),
        ("bomb", RunError::OutOfMemory),
        ("regex", RunError::Timeout),
        (
            "recurse",
            RunError::Thrown("RangeError: Maximum call stack size exceeded".to_owned()),
        ),
    ];
    for (what, expected) in limits {
        assert_eq!(
            sandbox.call(go(what)).await.unwrap_err().error,
            expected,
            "{what}"
        );
        // A fresh instance: the count starts again.
        assert_eq!(
            sandbox.call(go("count")).await.unwrap().value,
            json!(1),
            "after {what}"
        );
        assert_eq!(sandbox.pooled().0, 1);
    }
    sandbox.call(go("throw")).await.unwrap_err();
    assert_eq!(sandbox.call(go("count")).await.unwrap().value, json!(3));
}

#[tokio::test]
async fn a_huge_return_value_is_refused() {
    let mut c = call(
        "big",
        "export function f() { return 'x'.repeat(1e6); }",
        "f",
        vec![],
    );
    c.max_output_bytes = 64 << 10;
    let failure = sandbox().call(c).await.unwrap_err();
    assert!(
        matches!(&failure.error, RunError::Output(why) if why.contains("65536")),
        "{failure:?}"
    );
    assert_eq!(failure.error.code(), "output");
}

#[tokio::test]
async fn values_that_are_not_json_are_refused() {
    for returned in [
        "() => 1",
        "10n",
        "Symbol()",
        "(() => { const o = {}; o.o = o; return o; })()",
        "{ toJSON() { throw new Error('nope'); } }",
    ] {
        let source = format!("export function f() {{ return {returned}; }}");
        assert!(
            matches!(error(&source).await, RunError::Output(_)),
            "{returned}"
        );
    }
    assert_eq!(
        value("export function f() { return { a: undefined, b: [undefined], c: NaN, d: new Date(0) }; }").await,
        json!({"b": [null], "c": null, "d": "1970-01-01T00:00:00.000Z"})
    );
}

#[tokio::test]
async fn async_functions_are_awaited() {
    let source = r#"
        export async function f(ctx) {
            const a = await Promise.resolve(20);
            const b = await new Promise((resolve) => resolve(22));
            ctx.log("awaited");
            return { sum: a + b };
        }"#;
    let outcome = run(source, "f").await.unwrap();
    assert_eq!(outcome.value, json!({"sum": 42}));
    assert_eq!(outcome.logs, vec!["awaited".to_owned()]);
    let never = "export function f() { return new Promise(() => {}); }";
    assert_eq!(
        error(never).await,
        RunError::Thrown(
            "the promise never settles: nothing left to run could settle it".to_owned()
        )
    );
}

#[tokio::test]
async fn there_are_no_host_objects() {
    let source = r#"export function f() {
        return {
            types: ["require", "process", "fetch", "Deno", "std", "os", "setTimeout", "setInterval",
                    "console", "XMLHttpRequest", "WebAssembly", "scriptArgs", "print", "performance",
                    "queueMicrotask", "InternalError", "navigator", "Bun", "module", "exports", "__filename", "gc"]
                .map((name) => typeof globalThis[name]),
            evaluated: eval("1 + 1"),
            evalGlobals: eval("typeof require + typeof std"),
            globals: Object.getOwnPropertyNames(globalThis).sort(),
        };
    }"#;
    let result = value(source).await;
    assert!(
        result["types"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t == "undefined"),
        "{result}"
    );
    assert_eq!(result["evaluated"], json!(2));
    assert_eq!(result["evalGlobals"], json!("undefinedundefined"));
    let standard = [
        "AggregateError",
        "Array",
        "ArrayBuffer",
        "AsyncDisposableStack",
        "Atomics",
        "BigInt",
        "BigInt64Array",
        "BigUint64Array",
        "Boolean",
        "DataView",
        "Date",
        "DisposableStack",
        "Error",
        "EvalError",
        "Float16Array",
        "Float32Array",
        "Float64Array",
        "Function",
        "Infinity",
        "Int16Array",
        "Int32Array",
        "Int8Array",
        "Iterator",
        "JSON",
        "Map",
        "Math",
        "NaN",
        "Number",
        "Object",
        "Promise",
        "Proxy",
        "RangeError",
        "ReferenceError",
        "Reflect",
        "RegExp",
        "Set",
        "SharedArrayBuffer",
        "String",
        "SuppressedError",
        "Symbol",
        "SyntaxError",
        "TypeError",
        "URIError",
        "Uint16Array",
        "Uint32Array",
        "Uint8Array",
        "Uint8ClampedArray",
        "WeakMap",
        "WeakSet",
        "decodeURI",
        "decodeURIComponent",
        "encodeURI",
        "encodeURIComponent",
        "escape",
        "eval",
        "globalThis",
        "isFinite",
        "isNaN",
        "parseFloat",
        "parseInt",
        "undefined",
        "unescape",
    ];
    let globals: Vec<&str> = result["globals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    let extra: Vec<&&str> = globals.iter().filter(|g| !standard.contains(g)).collect();
    assert!(extra.is_empty(), "non-standard globals: {extra:?}");
}

#[tokio::test]
async fn modules_cannot_be_imported() {
    let static_import = "import * as std from 'std'; export function f() { return typeof std; }";
    let failure = error(static_import).await;
    assert!(
        matches!(&failure, RunError::Compile { message, .. } if message.contains("could not load module 'std'")),
        "{failure:?}"
    );
    let dynamic = "export async function f() { const os = await import('os'); return typeof os; }";
    let failure = error(dynamic).await;
    assert!(
        matches!(&failure, RunError::Thrown(message) if message.contains("could not load module 'os'")),
        "{failure:?}"
    );
    let caught = "export async function f() { try { await import('./other.js'); } catch (e) { return 'no'; } }";
    assert_eq!(value(caught).await, json!("no"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_keys_run_concurrently() {
    let sandbox = sandbox();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..1000 {
        let sandbox = sandbox.clone();
        tasks.spawn(async move {
            let source = format!(
                "export function onIncoming(msg, ctx) {{ return {{ reply: msg.n + {n} }}; }}"
            );
            let mut c = call(
                &format!("script:{n}:1"),
                &source,
                "onIncoming",
                vec![json!({"n": n})],
            );
            // A thousand users: one owner's instances would be bounded by its cap.
            c.owner = format!("user-{n}");
            (n, sandbox.call(c).await)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (n, result) = joined.unwrap();
        assert_eq!(result.unwrap().value, json!({"reply": 2 * n}));
    }
    let (count, bytes) = sandbox.pooled();
    assert_eq!(count, 1000);
    assert!(bytes > 1000 * 10_000, "{bytes} bytes");
}

#[tokio::test]
async fn a_batch_keeps_order_and_runs_each_key_on_one_instance() {
    let sandbox = sandbox();
    let keys = ["a", "b", "a", "c", "a", "b"];
    let calls = keys
        .iter()
        .map(|key| call(key, COUNTER, "f", vec![]))
        .collect();
    let results = sandbox.call_batch(calls).await;
    let values: Vec<Value> = results.into_iter().map(|r| r.unwrap().value).collect();
    assert_eq!(
        values,
        [json!(1), json!(1), json!(2), json!(1), json!(3), json!(2)]
    );
    // The instances went back to the pool with their state.
    let next = sandbox.call(call("a", COUNTER, "f", vec![])).await.unwrap();
    assert_eq!(next.value, json!(4));
    assert!(sandbox.call_batch(Vec::new()).await.is_empty());
}

#[tokio::test]
async fn a_batch_goes_on_after_a_failure() {
    let source = r#"
        let count = 0;
        export function f(what) { count += 1; if (what === "loop") for (;;) {} return count; }"#;
    let go = |what: &str| {
        let mut c = call("k", source, "f", vec![json!(what)]);
        c.with_ctx = false;
        c
    };
    let results = sandbox()
        .call_batch(vec![
            go("count"),
            go("count"),
            go("loop"),
            go("count"),
            go("missing"),
        ])
        .await;
    assert_eq!(results[0].as_ref().unwrap().value, json!(1));
    assert_eq!(results[1].as_ref().unwrap().value, json!(2));
    assert_eq!(results[2].as_ref().unwrap_err().error, RunError::Timeout);
    assert_eq!(results[3].as_ref().unwrap().value, json!(1));
    assert_eq!(results[4].as_ref().unwrap().value, json!(2));
}

#[tokio::test]
async fn the_least_recently_used_instances_are_evicted() {
    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        max_pooled: 2,
        ..SandboxConfig::default()
    });
    for key in ["a", "b", "a", "c"] {
        sandbox.call(call(key, COUNTER, "f", vec![])).await.unwrap();
    }
    assert_eq!(sandbox.pooled().0, 2);
    // "b" was the least recently used: evicted, so its count starts again. Putting it
    // back evicts "a", used before "c", which is kept.
    let b = sandbox.call(call("b", COUNTER, "f", vec![])).await.unwrap();
    assert_eq!(b.value, json!(1));
    let c = sandbox.call(call("c", COUNTER, "f", vec![])).await.unwrap();
    assert_eq!(c.value, json!(2));

    let none = Sandbox::new(SandboxConfig {
        threads: 1,
        max_pooled: 0,
        ..SandboxConfig::default()
    });
    none.call(call("a", COUNTER, "f", vec![])).await.unwrap();
    assert_eq!(none.pooled(), (0, 0));
}

/// Keeps `mib` MiB in a module variable and says how many the previous call kept.
const HOARDER: &str = "let kept = new Uint8Array(0);
    export function f(mib) { const before = kept.length >> 20; kept = new Uint8Array(mib << 20).fill(1); return before; }";

fn hoard(owner: &str, key: &str, mib: u32) -> Call {
    let mut c = call(key, HOARDER, "f", vec![json!(mib)]);
    c.with_ctx = false;
    c.owner = owner.to_owned();
    c.limits.memory_bytes = 64 << 20;
    c
}

#[tokio::test]
async fn idle_instances_with_large_module_state_stay_within_the_byte_caps() {
    const MIB: usize = 1 << 20;
    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        max_pooled_bytes: 8 * MIB,
        max_owner_bytes: 5 * MIB,
        max_instance_bytes: 3 * MIB,
        ..SandboxConfig::default()
    });
    // The attack of issue 23, scaled down: calls that each leave 2 MiB behind.
    for n in 0..10 {
        let owner = format!("user-{}", n % 5);
        sandbox
            .call(hoard(&owner, &format!("job:{n}"), 2))
            .await
            .unwrap();
        let (count, bytes) = sandbox.pooled();
        assert!(bytes <= 8 * MIB, "{count} instances, {bytes} bytes");
        assert!(bytes >= count * 2 * MIB, "{count} instances, {bytes} bytes");
    }
    // Three of ~2.1 MiB fit in 8 MiB; the three most recent, of three owners.
    assert_eq!(sandbox.pooled().0, 3);
    let kept = sandbox.call(hoard("user-4", "job:9", 1)).await.unwrap();
    assert_eq!(
        kept.value,
        json!(2),
        "the most recent instance kept its state"
    );
    let evicted = sandbox.call(hoard("user-0", "job:0", 1)).await.unwrap();
    assert_eq!(evicted.value, json!(0), "the oldest was evicted");

    // An instance that grew past 3 MiB is dropped, not pooled: its state is gone.
    sandbox.call(hoard("ada", "big", 4)).await.unwrap();
    let again = sandbox.call(hoard("ada", "big", 1)).await.unwrap();
    assert_eq!(again.value, json!(0));
}

#[tokio::test]
async fn one_owner_cannot_push_out_the_instances_of_others() {
    const MIB: usize = 1 << 20;
    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        max_pooled_bytes: 8 * MIB,
        max_owner_bytes: 5 * MIB,
        max_instance_bytes: 3 * MIB,
        ..SandboxConfig::default()
    });
    sandbox.call(hoard("bob", "bob's", 2)).await.unwrap();
    for n in 0..10 {
        sandbox
            .call(hoard("mallory", &format!("job:{n}"), 2))
            .await
            .unwrap();
    }
    // Mallory keeps two of hers (4.2 of her 5 MiB); bob's is still there.
    assert_eq!(sandbox.pooled().0, 3);
    let bob = sandbox.call(hoard("bob", "bob's", 1)).await.unwrap();
    assert_eq!(bob.value, json!(2));
}

#[tokio::test]
async fn instances_are_reused_for_their_owner_only() {
    let sandbox = sandbox();
    let mut ada = call("shared key", COUNTER, "f", vec![]);
    ada.owner = "ada".to_owned();
    assert_eq!(sandbox.call(ada).await.unwrap().value, json!(1));
    let mut bob = call("shared key", COUNTER, "f", vec![]);
    bob.owner = "bob".to_owned();
    assert_eq!(sandbox.call(bob).await.unwrap().value, json!(1));
    assert_eq!(sandbox.pooled().0, 2);
}

#[test]
fn error_codes_are_stable() {
    let codes: Vec<&str> = [
        RunError::Compile {
            message: String::new(),
            line: None,
            column: None,
        },
        RunError::Missing(String::new()),
        RunError::Thrown(String::new()),
        RunError::Timeout,
        RunError::OutOfMemory,
        RunError::KvCalls { max: 0 },
        RunError::Output(String::new()),
        RunError::Unavailable(String::new()),
    ]
    .iter()
    .map(RunError::code)
    .collect();
    assert_eq!(
        codes,
        [
            "compile",
            "missing",
            "thrown",
            "timeout",
            "out_of_memory",
            "kv_calls",
            "output",
            "unavailable"
        ]
    );
    let compile = RunError::Compile {
        message: "SyntaxError: expecting ';'".to_owned(),
        line: Some(3),
        column: Some(7),
    };
    assert_eq!(
        compile.to_string(),
        "compile error: SyntaxError: expecting ';' (line 3, column 7)"
    );
}

#[tokio::test]
async fn atomics_wait_cannot_block_the_thread() {
    let source = "export function f() { return Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1e9); }";
    let failure = error(source).await;
    assert_eq!(
        failure,
        RunError::Thrown("TypeError: cannot block in this thread".to_owned())
    );
}

/// A store that panics: a bug in the caller's code.
struct PanickingKv;

impl Kv for PanickingKv {
    fn get(&mut self, _: &str, _: Instant) -> Result<Option<Value>, String> {
        panic!("store bug");
    }
    fn set(&mut self, _: &str, _: Value, _: Instant) -> Result<(), String> {
        Ok(())
    }
    fn delete(&mut self, _: &str, _: Instant) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_store_fails_the_call_not_the_sandbox() {
    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        max_pooled: 16,
        ..SandboxConfig::default()
    });
    let source = r#"export function f(ctx) { try { ctx.kv.get("a"); } catch (e) {} return 1; }"#;
    let mut c = call("k", source, "f", vec![]);
    c.kv = Some(Box::new(PanickingKv));
    let failure = sandbox.call(c).await.unwrap_err();
    assert_eq!(
        failure.error,
        RunError::Unavailable("the kv store failed".to_owned())
    );
    // The one thread survived, and the instance was not pooled.
    assert_eq!(sandbox.pooled().0, 0);
    let outcome = sandbox.call(call("k", source, "f", vec![])).await.unwrap();
    assert_eq!(outcome.value, json!(1));
}

#[test]
fn the_api_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let sandbox = sandbox();
    send_sync(&sandbox);
    send(&sandbox.call(call("k", COUNTER, "f", vec![])));
    send(&sandbox.call_batch(Vec::new()));
    send(&sandbox.check(COUNTER));
}

/// A store whose `get` returns once `parties` calls are inside it at the same time (or
/// fails after a while if they never are).
#[derive(Clone)]
struct Rendezvous(Arc<(Mutex<usize>, std::sync::Condvar)>, usize);

impl Kv for Rendezvous {
    fn get(&mut self, _: &str, _: Instant) -> Result<Option<Value>, String> {
        let (arrived, all_here) = &*self.0;
        let mut arrived = arrived.lock().unwrap();
        *arrived += 1;
        all_here.notify_all();
        let (arrived, wait) = all_here
            .wait_timeout_while(arrived, Duration::from_secs(10), |n| *n < self.1)
            .unwrap();
        if wait.timed_out() {
            return Err(format!("only {} of {} arrived", *arrived, self.1));
        }
        Ok(Some(json!("met")))
    }
    fn set(&mut self, _: &str, _: Value, _: Instant) -> Result<(), String> {
        Ok(())
    }
    fn delete(&mut self, _: &str, _: Instant) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_gets_another_instance() {
    let sandbox = sandbox();
    let source = r#"export function f(ctx) { return ctx.kv.get("x"); }"#;
    let rendezvous = Rendezvous(Arc::default(), 2);
    let go = || {
        let mut c = call("busy", source, "f", vec![]);
        c.kv = Some(Box::new(rendezvous.clone()));
        sandbox.call(c)
    };
    let (first, second) = tokio::join!(go(), go());
    assert_eq!(first.unwrap().value, json!("met"));
    assert_eq!(second.unwrap().value, json!("met"));
    assert_eq!(sandbox.pooled().0, 2);
}

/// A store whose `get` says it was entered, then waits until it is let go.
struct Gate {
    entered: std::sync::mpsc::Sender<()>,
    release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl Kv for Gate {
    fn get(&mut self, _: &str, _: Instant) -> Result<Option<Value>, String> {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
        Ok(None)
    }
    fn set(&mut self, _: &str, _: Value, _: Instant) -> Result<(), String> {
        Ok(())
    }
    fn delete(&mut self, _: &str, _: Instant) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_caller_gave_up_before_it_started_is_skipped() {
    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        ..SandboxConfig::default()
    });
    let (entered, was_entered) = std::sync::mpsc::channel();
    let (let_go, release) = std::sync::mpsc::channel();
    let mut busy = call(
        "busy",
        r#"export function f(ctx) { ctx.kv.get("k"); }"#,
        "f",
        vec![],
    );
    busy.kv = Some(Box::new(Gate {
        entered,
        release: Arc::new(Mutex::new(release)),
    }));
    let busy = tokio::spawn({
        let sandbox = sandbox.clone();
        async move { sandbox.call(busy).await }
    });
    // The one thread is inside the first call.
    tokio::task::spawn_blocking(move || was_entered.recv().unwrap())
        .await
        .unwrap();
    let store = MapKv::default();
    let mut given_up = call(
        "given up",
        r#"export function f(ctx) { ctx.kv.set("ran", true); }"#,
        "f",
        vec![],
    );
    given_up.kv = Some(Box::new(store.clone()));
    // Polled once, so the job is queued; then given up.
    let mut waiting = Box::pin(sandbox.call(given_up));
    tokio::select! {
        biased;
        _ = &mut waiting => panic!("the only thread is busy"),
        () = std::future::ready(()) => {}
    }
    drop(waiting);
    let_go.send(()).unwrap();
    busy.await.unwrap().unwrap();
    // The thread takes jobs in order: once this one is done, the one given up was
    // skipped or run.
    sandbox
        .call(call("after", COUNTER, "f", vec![]))
        .await
        .unwrap();
    assert!(
        store.0.lock().unwrap().is_empty(),
        "the call given up never ran"
    );
}
