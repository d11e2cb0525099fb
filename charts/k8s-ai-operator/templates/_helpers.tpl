{{/*
Object names are fixed, not derived from the release name: the operator finds its Lease, its
certificate Secret, its webhook configuration and the sidecar roles by these names, so one
release runs per cluster.
*/}}

{{/* Labels of every object: the kustomize install's, Helm's own, and commonLabels. */}}
{{- define "k8s-ai-operator.labels" -}}
app.kubernetes.io/part-of: k8s-ai-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- include "k8s-ai-operator.strings" .Values.commonLabels }}
{{- end }}

{{/* A map of strings, each value quoted: `--set podAnnotations.x=true` is a boolean to Helm. */}}
{{- define "k8s-ai-operator.strings" -}}
{{- range $key, $value := . }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The operator's own objects: the labels above and its name, which its pods are selected by. */}}
{{- define "k8s-ai-operator.operatorLabels" -}}
app.kubernetes.io/name: k8s-ai-operator
{{ include "k8s-ai-operator.labels" . }}
{{- end }}

{{/* metadata.annotations of every object, when commonAnnotations has any. */}}
{{- define "k8s-ai-operator.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- include "k8s-ai-operator.strings" . | indent 2 }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: the digest wins, the tag defaults to appVersion. */}}
{{- define "k8s-ai-operator.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag | default $root.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/*
The static manifests shared with the kustomize install (files/, links into manifests/), each
object labelled as the others; the operator's namespace in them becomes the release's.
*/}}
{{- define "k8s-ai-operator.sharedManifests" -}}
{{- $root := index . 0 -}}
{{- $text := $root.Files.Get (index . 1) | replace "system:serviceaccount:ai-operator-system:" (printf "system:serviceaccount:%s:" $root.Release.Namespace) -}}
{{- range $doc := regexSplit "(?m)^---\\s*$" $text -1 }}
{{- $object := fromYaml $doc }}
{{- if $object }}
{{- $labels := merge (fromYaml (include "k8s-ai-operator.labels" $root)) ($object.metadata.labels | default dict) }}
{{- $_ := set $object.metadata "labels" $labels }}
{{- with $root.Values.commonAnnotations }}
{{- $_ := set $object.metadata "annotations" (merge (deepCopy .) ($object.metadata.annotations | default dict)) }}
{{- end }}
---
{{ toYaml $object }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's settings that differ from its defaults (each flag's AI_OPERATOR_* variable), so that
the defaults render exactly as manifests/default.
*/}}
{{- define "k8s-ai-operator.operatorEnv" -}}
{{- $v := .Values -}}
{{- if not (has $v.certificates.mode (list "self-managed" "cert-manager")) }}
{{- fail (printf "certificates.mode must be self-managed or cert-manager, not %q" $v.certificates.mode) }}
{{- end }}
{{- if eq $v.certificates.mode "cert-manager" }}
- name: AI_OPERATOR_CERT_MODE
  value: files
- name: AI_OPERATOR_TLS_CERT_FILE
  value: /etc/k8s-ai-operator/tls/tls.crt
- name: AI_OPERATOR_TLS_KEY_FILE
  value: /etc/k8s-ai-operator/tls/tls.key
{{- end }}
{{- if ne $v.operator.logLevel "info" }}
- name: AI_OPERATOR_LOG
  value: {{ $v.operator.logLevel | quote }}
{{- end }}
{{- if ne $v.operator.logFormat "json" }}
- name: AI_OPERATOR_LOG_FORMAT
  value: {{ $v.operator.logFormat | quote }}
{{- end }}
{{- $sidecarImage := include "k8s-ai-operator.image" (list $v.sidecar.image .) }}
{{- if ne $sidecarImage (printf "ghcr.io/kernelpanic09/ai-sidecar:%s" .Chart.AppVersion) }}
- name: AI_OPERATOR_SIDECAR_IMAGE
  value: {{ $sidecarImage | quote }}
{{- end }}
{{- if not $v.sidecar.native }}
- name: AI_OPERATOR_NATIVE_SIDECAR
  value: "false"
{{- end }}
{{- if ne $v.sidecar.resources.cpuRequest "10m" }}
- name: AI_OPERATOR_SIDECAR_CPU_REQUEST
  value: {{ $v.sidecar.resources.cpuRequest | quote }}
{{- end }}
{{- if ne $v.sidecar.resources.memoryRequest "32Mi" }}
- name: AI_OPERATOR_SIDECAR_MEMORY_REQUEST
  value: {{ $v.sidecar.resources.memoryRequest | quote }}
{{- end }}
{{- if ne $v.sidecar.resources.memoryLimit "64Mi" }}
- name: AI_OPERATOR_SIDECAR_MEMORY_LIMIT
  value: {{ $v.sidecar.resources.memoryLimit | quote }}
{{- end }}
{{- with $v.operator.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The operator's arguments beyond `run`: the sidecar's environment (repeatable --sidecar-env). */}}
{{- define "k8s-ai-operator.operatorArgs" -}}
{{- $env := deepCopy .Values.sidecar.env -}}
{{- with .Values.sidecar.logLevel }}{{ $_ := set $env "AI_SIDECAR_LOG" . }}{{ end -}}
{{- with .Values.sidecar.traces }}
{{- with .endpoint }}{{ $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" . }}{{ end -}}
{{- with .sampler }}{{ $_ := set $env "OTEL_TRACES_SAMPLER" . }}{{ end -}}
{{- with .samplerArg }}{{ $_ := set $env "OTEL_TRACES_SAMPLER_ARG" (toString .) }}{{ end -}}
{{- if .messageContent }}{{ $_ := set $env "AI_SIDECAR_TRACE_MESSAGE_CONTENT" "true" }}{{ end -}}
{{- end }}
{{- range $key := keys $env | sortAlpha }}
- --sidecar-env={{ $key }}={{ get $env $key }}
{{- end }}
{{- end }}
