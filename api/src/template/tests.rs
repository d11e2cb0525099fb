use serde_json::json;

use super::go_compat::hint;
use super::*;

/// The `code-review` `PromptTemplate` of the README.
fn code_review() -> PromptTemplateSpec {
    serde_json::from_value(json!({
        "systemPrompt": "You are a senior engineer. Be direct and specific.",
        "template": "Review this diff focusing on {{.Focus}}:\n\n```diff\n{{.Diff}}\n```\n",
        "variables": [
            {"name": "Diff", "type": "string", "required": true},
            {"name": "Focus", "type": "string", "default": "security and correctness"}
        ],
        "modelEndpointRef": {"name": "claude-haiku"}
    }))
    .unwrap()
}

/// A spec with `template` and `variables` (JSON as in the CRD).
fn spec(template: &str, variables: Value) -> PromptTemplateSpec {
    let mut spec = json!({"template": template, "modelEndpointRef": {"name": "m"}});
    spec["variables"] = variables;
    serde_json::from_value(spec).unwrap()
}

fn vars(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn compile_err(template: &str, variables: Value) -> TemplateError {
    CompiledTemplate::compile(&spec(template, variables)).unwrap_err()
}

fn render(template: &str, variables: Value, values: Value) -> Result<String, TemplateError> {
    CompiledTemplate::compile(&spec(template, variables))
        .unwrap()
        .render(&vars(values))
        .map(|r| r.prompt)
}

#[test]
fn seed_code_review_renders_the_readme_curl() {
    let compiled = CompiledTemplate::compile(&code_review()).unwrap();
    assert!(compiled.unused_variables().is_empty());
    // The body of the README's `curl … /render/ai-workloads/code-review -d '…'`.
    let body: Value = serde_json::from_str(
        r#"{"variables":{"Diff":"- password = \"hunter2\"\n+ password = os.getenv(\"PASSWORD\")","Focus":"security"}}"#,
    )
    .unwrap();
    let rendered = compiled.render(&vars(body["variables"].clone())).unwrap();
    assert_eq!(
        rendered,
        Rendered {
            system_prompt: Some("You are a senior engineer. Be direct and specific.".into()),
            prompt: "Review this diff focusing on security:\n\n```diff\n- password = \"hunter2\"\n+ password = os.getenv(\"PASSWORD\")\n```\n".into(),
        }
    );
}

#[test]
fn default_applies_when_focus_is_omitted_or_null() {
    let compiled = CompiledTemplate::compile(&code_review()).unwrap();
    let expected = "Review this diff focusing on security and correctness:\n\n```diff\n+ x\n```\n";
    for values in [
        json!({"Diff": "+ x"}),
        json!({"Diff": "+ x", "Focus": null}),
    ] {
        assert_eq!(compiled.render(&vars(values)).unwrap().prompt, expected);
    }
}

#[test]
fn missing_required_variable_is_named() {
    let compiled = CompiledTemplate::compile(&code_review()).unwrap();
    for values in [json!({"Focus": "style"}), json!({"Diff": null})] {
        let err = compiled.render(&vars(values)).unwrap_err();
        assert_eq!(
            err,
            TemplateError::MissingVariables {
                names: vec!["Diff".into()]
            }
        );
        assert!(
            err.to_string()
                .contains("missing required variable(s): Diff"),
            "{err}"
        );
    }
}

#[test]
fn typo_in_template_is_a_compile_error_naming_it() {
    let mut spec = code_review();
    spec.template = "Review this diff focusing on {{.Focuss}}:\n{{.Diff}}".into();
    let err = CompiledTemplate::compile(&spec).unwrap_err();
    assert_eq!(
        err.to_string(),
        "template uses {{Focuss}} at line 1, column 30 but declares no variable Focuss; \
         declared: Diff, Focus. Fix the spelling or declare it in spec.variables"
    );
    // Also inside a handlebars condition, and with `{{ .Name }}` spacing.
    spec.template = "{{#if Focuss}}x{{/if}}{{ .Diff }}".into();
    let err = CompiledTemplate::compile(&spec).unwrap_err();
    assert!(matches!(err, TemplateError::UndeclaredVariable { ref name, .. } if name == "Focuss"));
}

#[test]
fn go_actions_other_than_fields_are_clear_errors() {
    let declared = json!([{"name": "X", "type": "boolean"}, {"name": "Items"}]);
    for (template, hint) in [
        ("{{if .X}}yes{{end}}", hint::IF),
        ("{{ if .X }}yes{{ else }}no{{ end }}", hint::IF),
        ("{{range .Items}}{{.}}{{end}}", hint::RANGE),
        ("{{with .X}}{{.}}{{end}}", hint::WITH),
        ("{{- .X -}}", hint::TRIM),
        ("{{.X | printf \"%q\"}}", hint::PIPELINE),
        ("{{printf \"%s\" .X}}", hint::PIPELINE),
        ("{{.}}", hint::FIELD),
        ("{{.X.Y}}", hint::FIELD),
        ("{{$x := .X}}", hint::VARIABLE),
        ("{{/* note */}}", hint::COMMENT),
        ("{{template \"other\" .}}", hint::TEMPLATE),
        ("{{#if X}}a{{end}}", hint::END),
    ] {
        let err = compile_err(template, declared.clone());
        let TemplateError::GoAction { hint: got, .. } = &err else {
            panic!("{template}: {err:?}");
        };
        assert_eq!(*got, hint, "{template}");
        let message = err.to_string();
        assert!(message.contains("is a Go template action"), "{message}");
        assert!(
            message.contains("write everything else in handlebars syntax"),
            "{message}"
        );
    }
    // Helm-style text meant literally must be escaped or put in a raw block.
    let err = compile_err("```yaml\nimage: {{ .Values.image }}\n```", declared.clone());
    assert!(
        matches!(
            err,
            TemplateError::GoAction {
                hint: hint::FIELD,
                ..
            }
        ),
        "{err:?}"
    );
    let literal =
        "```yaml\nimage: \\{{ .Values.image }} {{{{raw}}}}{{ .Values.tag }}{{{{/raw}}}}\n```";
    assert_eq!(
        render(literal, declared.clone(), json!({})).unwrap(),
        "```yaml\nimage: {{ .Values.image }} {{ .Values.tag }}\n```"
    );
    let err = compile_err("line one\n  {{if .X}}yes{{end}}", declared);
    assert_eq!(
        err.to_string(),
        "`{{if .X}}` at line 2, column 3 is a Go template action; only `{{.Name}}` field \
         references are accepted from Go templates, write everything else in handlebars \
         syntax: `{{#if Name}}…{{else}}…{{/if}}` (to keep the tag as literal text, write \
         `\\{{` or wrap it in `{{{{raw}}}}…{{{{/raw}}}}`)"
    );
}

#[test]
fn handlebars_if_works() {
    let template = "{{#if Focus}}Focus on {{Focus}}.{{else}}General review.{{/if}} {{Diff}}";
    let declared = json!([{"name": "Diff", "required": true}, {"name": "Focus"}]);
    assert_eq!(
        render(
            template,
            declared.clone(),
            json!({"Diff": "d", "Focus": "tests"})
        )
        .unwrap(),
        "Focus on tests. d"
    );
    // An optional variable without default is empty text, so false in `#if`.
    assert_eq!(
        render(template, declared, json!({"Diff": "d"})).unwrap(),
        "General review. d"
    );
    // Built-in helpers in subexpressions, and `{{else if}}` chains.
    let template = "{{#if (eq Mode \"fast\")}}F{{else if (eq Mode \"slow\")}}S{{else}}?{{/if}}";
    let declared = json!([{"name": "Mode", "required": true}]);
    assert_eq!(
        render(template, declared.clone(), json!({"Mode": "slow"})).unwrap(),
        "S"
    );
    assert_eq!(
        render(template, declared, json!({"Mode": "x"})).unwrap(),
        "?"
    );
}

#[test]
fn number_variables_take_numbers_or_numeric_strings() {
    let template = "{{Count}} {{#if (gt Count 3)}}many{{else}}few{{/if}}";
    let declared = json!([{"name": "Count", "type": "number", "default": "2"}]);
    assert_eq!(
        render(template, declared.clone(), json!({"Count": 5})).unwrap(),
        "5 many"
    );
    assert_eq!(
        render(template, declared.clone(), json!({"Count": " 5 "})).unwrap(),
        "5 many"
    );
    assert_eq!(
        render(template, declared.clone(), json!({"Count": 2.5})).unwrap(),
        "2.5 few"
    );
    assert_eq!(
        render(template, declared.clone(), json!({})).unwrap(),
        "2 few"
    );
    for bad in [json!("five"), json!(true), json!("NaN"), json!([1])] {
        let err = render(template, declared.clone(), json!({"Count": bad})).unwrap_err();
        assert!(
            matches!(&err, TemplateError::WrongType { name, expected: "number", .. } if name == "Count"),
            "{err:?}"
        );
    }
    let err = compile_err(
        "{{Count}}",
        json!([{"name": "Count", "type": "number", "default": "lots"}]),
    );
    assert_eq!(
        err.to_string(),
        "variable Count has type number but its default \"lots\" is not one: write a number such as 3 or 2.5"
    );
}

#[test]
fn boolean_variables_take_true_false_or_their_strings() {
    let template = "{{#if Strict}}strict{{else}}lenient{{/if}} ({{Strict}})";
    let declared = json!([{"name": "Strict", "type": "boolean", "default": "false"}]);
    assert_eq!(
        render(template, declared.clone(), json!({"Strict": true})).unwrap(),
        "strict (true)"
    );
    assert_eq!(
        render(template, declared.clone(), json!({"Strict": "true"})).unwrap(),
        "strict (true)"
    );
    assert_eq!(
        render(template, declared.clone(), json!({"Strict": "false"})).unwrap(),
        "lenient (false)"
    );
    assert_eq!(
        render(template, declared.clone(), json!({})).unwrap(),
        "lenient (false)"
    );
    for bad in [json!("yes"), json!(1), json!("True")] {
        let err = render(template, declared.clone(), json!({"Strict": bad})).unwrap_err();
        assert!(
            matches!(
                err,
                TemplateError::WrongType {
                    expected: "boolean",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let err = compile_err(
        "{{Strict}}",
        json!([{"name": "Strict", "type": "boolean", "default": "yes"}]),
    );
    assert!(
        matches!(
            err,
            TemplateError::InvalidDefault {
                expected: "boolean",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn string_variables_take_only_strings() {
    let declared = json!([{"name": "Diff", "required": true}]);
    let err = render("{{Diff}}", declared, json!({"Diff": 3})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "variable Diff is a string, but the value given is the number 3: pass a JSON string \
         (quote numbers and booleans: \"3\", \"true\")"
    );
}

#[test]
fn unknown_variables_given_are_errors() {
    let compiled = CompiledTemplate::compile(&code_review()).unwrap();
    let err = compiled
        .render(&vars(json!({"Diff": "d", "Fcous": "x", "Extra": 1})))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown variable(s) given: Extra, Fcous; the template declares: Diff, Focus. Fix the spelling or drop them"
    );
}

#[test]
fn strict_mode_errors_instead_of_rendering_nothing() {
    // Inside `each`, names are the item's: a missing field is an error, not empty text.
    let err = render("{{#each [{\"a\": 1}]}}{{b}}{{/each}}", json!([]), json!({})).unwrap_err();
    assert!(matches!(err, TemplateError::Render { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("{{b}} has no value there (strict mode)"),
        "{err}"
    );
    // A variable read as the item's field fails too, and says how to reach it.
    let declared = json!([{"name": "Diff", "required": true}]);
    let err = render(
        "{{#each [1]}}{{Diff}}{{/each}}",
        declared.clone(),
        json!({"Diff": "d"}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("{{@root.Name}}"), "{err}");
    assert_eq!(
        render(
            "{{#each [1, 2] as |n|}}{{n}}{{@root.Diff}}{{../Diff}} {{/each}}",
            declared,
            json!({"Diff": "d"})
        )
        .unwrap(),
        "1dd 2dd "
    );
}

#[test]
fn values_are_not_html_escaped() {
    let declared = json!([{"name": "Diff", "required": true}]);
    let value = "<script>alert(\"x\" & 'y')</script> `a` = b";
    assert_eq!(
        render(
            "{{Diff}}|{{{Diff}}}|{{.Diff}}",
            declared,
            json!({"Diff": value})
        )
        .unwrap(),
        format!("{value}|{value}|{value}")
    );
}

#[test]
fn template_bomb_hits_the_output_limit() {
    // A million turns of a loop each printing a 100-byte value: 100 MB if nothing stopped it.
    let thousand = format!(
        "[{}]",
        (0..1000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let template = format!(
        "{{{{#each {thousand}}}}}{{{{#each {thousand}}}}}{{{{@root.Diff}}}}{{{{/each}}}}{{{{/each}}}}"
    );
    let declared = json!([{"name": "Diff", "required": true}]);
    let err = render(&template, declared, json!({"Diff": "x".repeat(100)})).unwrap_err();
    assert_eq!(
        err,
        TemplateError::OutputTooLarge {
            limit: MAX_RENDERED_BYTES
        }
    );
    // A big value repeated: the same.
    let declared = json!([{"name": "Diff", "required": true}]);
    let repeated = "{{Diff}}".repeat(20);
    let err = render(&repeated, declared, json!({"Diff": "x".repeat(100_000)})).unwrap_err();
    assert_eq!(
        err,
        TemplateError::OutputTooLarge {
            limit: MAX_RENDERED_BYTES
        }
    );
}

#[test]
fn loops_that_print_nothing_are_bounded_at_compile_time() {
    let thousand = format!(
        "[{}]",
        (0..1000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let template = format!(
        "{{{{#each {thousand}}}}}{{{{#each {thousand}}}}}{{{{#each {thousand}}}}}{{{{/each}}}}{{{{/each}}}}{{{{/each}}}}"
    );
    let err = compile_err(&template, json!([]));
    assert!(matches!(err, TemplateError::TooMuchWork { .. }), "{err:?}");
    // Loops over something other than a literal are bounded by the largest literal (or 64).
    let template = format!(
        "{{{{#each {thousand}}}}}{{{{#each this}}}}{{{{#each this}}}}{{{{/each}}}}{{{{/each}}}}{{{{/each}}}}"
    );
    let err = compile_err(&template, json!([]));
    assert!(matches!(err, TemplateError::TooMuchWork { .. }), "{err:?}");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let brackets = format!(
        "{{{{#each {}1{}}}}}x{{{{/each}}}}",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    assert!(matches!(
        compile_err(&brackets, json!([])),
        TemplateError::NestingTooDeep { .. }
    ));
    let parens = format!(
        "{{{{len {}\"a\"{}}}}}",
        "(len ".repeat(10_000),
        ")".repeat(10_000)
    );
    assert!(matches!(
        compile_err(&parens, json!([])),
        TemplateError::NestingTooDeep { .. }
    ));
    let blocks = format!(
        "{}x{}",
        "{{#if true}}".repeat(3_000),
        "{{/if}}".repeat(3_000)
    );
    let err = compile_err(&blocks, json!([]));
    assert_eq!(
        err,
        TemplateError::NestingTooDeep {
            position: Position {
                line: 1,
                column: 1 + 12 * MAX_NESTING
            },
            limit: MAX_NESTING
        }
    );
    // At the limit, it compiles and renders.
    let ok = format!(
        "{}x{}",
        "{{#if true}}".repeat(MAX_NESTING),
        "{{/if}}".repeat(MAX_NESTING)
    );
    assert_eq!(render(&ok, json!([]), json!({})).unwrap(), "x");
}

#[test]
fn raw_blocks_escapes_and_comments_are_not_rewritten() {
    let declared = json!([{"name": "Diff", "required": true}]);
    let template = "{{{{raw}}}}{{.Diff}} {{if .X}}{{{{/raw}}}} \\{{.Diff}} {{!-- {{.Nope}} --}}{{! {{if .X }}[{{.Diff}}]";
    assert_eq!(
        render(template, declared, json!({"Diff": "d"})).unwrap(),
        "{{.Diff}} {{if .X}} {{.Diff}} [d]"
    );
}

#[test]
fn code_fences_are_plain_text() {
    let declared = json!([{"name": "Code", "required": true}]);
    let template = "```go\nfunc f() { return m[\"k\"] }\n{{ .Code }}\n```\n";
    assert_eq!(
        render(template, declared, json!({"Code": "x := {{y}}"})).unwrap(),
        "```go\nfunc f() { return m[\"k\"] }\nx := {{y}}\n```\n"
    );
}

#[test]
fn declarations_are_checked() {
    let err = compile_err(
        "{{X}}",
        json!([{"name": "X", "required": true, "default": "a"}]),
    );
    assert_eq!(err, TemplateError::RequiredWithDefault { name: "X".into() });
    let err = compile_err("{{X}}", json!([{"name": "X"}, {"name": "X"}]));
    assert_eq!(err, TemplateError::DuplicateVariable { name: "X".into() });
    let err = compile_err("{{X}}", json!([{"name": "X"}, {"name": "len"}]));
    assert_eq!(
        err,
        TemplateError::ReservedVariableName { name: "len".into() }
    );
    let err = compile_err("{{X}}", json!([{"name": "X"}, {"name": "true"}]));
    assert_eq!(
        err,
        TemplateError::ReservedVariableName {
            name: "true".into()
        }
    );
    let err = compile_err("{{X}}", json!([{"name": "1X"}]));
    assert_eq!(
        err,
        TemplateError::InvalidVariableName { name: "1X".into() }
    );
    let many: Vec<Value> = (0..=MAX_VARIABLES)
        .map(|i| json!({"name": format!("V{i}")}))
        .collect();
    let err = compile_err("x", Value::Array(many));
    assert!(matches!(err, TemplateError::TooManyVariables { .. }));
    let err = compile_err(&"x".repeat(MAX_TEMPLATE_BYTES + 1), json!([]));
    assert!(matches!(err, TemplateError::TemplateTooLarge { .. }));
}

#[test]
fn unused_variables_are_reported_not_rejected() {
    let declared = json!([{"name": "Diff", "required": true}, {"name": "Focus"}, {"name": "Lang"}]);
    let compiled =
        CompiledTemplate::compile(&spec("{{Diff}}{{#if Lang}}{{/if}}", declared)).unwrap();
    assert_eq!(compiled.unused_variables(), ["Focus".to_owned()]);
}

#[test]
fn only_builtin_helpers_and_no_partials() {
    let declared = json!([{"name": "Focus"}]);
    let err = compile_err("{{shout Focus}}", declared.clone());
    assert!(
        matches!(&err, TemplateError::UnknownHelper { name, .. } if name == "shout"),
        "{err:?}"
    );
    let err = compile_err("{{#Focus}}x{{/Focus}}", declared.clone());
    assert!(err.to_string().contains("{{#if Name}}"), "{err}");
    let err = compile_err("{{> header}}", declared.clone());
    assert!(matches!(err, TemplateError::Unsupported { .. }), "{err:?}");
    let err = compile_err("{{#*inline \"p\"}}x{{/inline}}", declared);
    assert!(matches!(err, TemplateError::Unsupported { .. }), "{err:?}");
}

#[test]
fn fields_of_variables_are_errors() {
    let err = compile_err("{{Diff.length}}", json!([{"name": "Diff"}]));
    assert!(
        matches!(err, TemplateError::FieldOfVariable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("write {{Diff}}"), "{err}");
}

#[test]
fn syntax_errors_keep_the_original_position() {
    let err = compile_err(
        "{{.Diff}} and {{#if Diff}}\nnever closed",
        json!([{"name": "Diff"}]),
    );
    let TemplateError::Syntax { position, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(position.is_some(), "{err}");
    // `{{ .Diff }}` became `{{  Diff }}`: same length, so the column is the source's.
    let err = compile_err("{{ .Diff }} {{Diff}", json!([{"name": "Diff"}]));
    assert!(
        matches!(
            err,
            TemplateError::Syntax {
                position: Some(Position {
                    line: 1,
                    column: 19
                }),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn system_prompt_is_not_templated() {
    let mut spec = code_review();
    spec.system_prompt = Some("Keep {{.Diff}} and {{#if}} as written.".into());
    let compiled = CompiledTemplate::compile(&spec).unwrap();
    let rendered = compiled.render(&vars(json!({"Diff": "d"}))).unwrap();
    assert_eq!(
        rendered.system_prompt.as_deref(),
        Some("Keep {{.Diff}} and {{#if}} as written.")
    );
}

#[test]
fn builtin_helper_list_matches_handlebars() {
    for name in BUILTIN_HELPERS {
        let template = Template::compile(&format!("{{{{{name} 1 2}}}}")).unwrap();
        let context = Context::from(json!({}));
        let mut output = LimitedOutput {
            text: String::new(),
            limit: 100,
            exceeded: false,
        };
        if let Err(err) = template.render(
            &REGISTRY,
            &context,
            &mut RenderContext::new(None),
            &mut output,
        ) {
            assert!(
                !matches!(err.reason(), RenderErrorReason::HelperNotFound(_)),
                "{name}: {err}"
            );
        }
    }
    let template = Template::compile("{{nosuchhelper 1 2}}").unwrap();
    let err = template
        .render(
            &REGISTRY,
            &Context::from(json!({})),
            &mut RenderContext::new(None),
            &mut LimitedOutput {
                text: String::new(),
                limit: 100,
                exceeded: false,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err.reason(), RenderErrorReason::HelperNotFound(_)),
        "{err}"
    );
}

#[test]
fn compiled_templates_are_shareable() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<CompiledTemplate>();
    send_sync::<TemplateError>();
}
