{{/*
Names, labels and the addresses every component derives from them. The operator and the
orchestrators never compute these names themselves: the templates pass them in MUTIRAO_*
environment variables.
*/}}

{{- define "mutirao.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource-name prefix: "<release>-mutirao", or "<release>" if it contains the name. */}}
{{- define "mutirao.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 38 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 38 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 38 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mutirao.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mutirao.labels" -}}
helm.sh/chart: {{ include "mutirao.chart" . }}
app.kubernetes.io/name: {{ include "mutirao.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mutirao
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "worker"). */}}
{{- define "mutirao.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mutirao.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mutirao.componentLabels" -}}
{{ include "mutirao.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The label the operator puts on the leader pod, selected by the client Service. */}}
{{- define "mutirao.leaderLabel" -}}mutirao.dev/leader{{- end }}

{{- define "mutirao.orchestrator.name" -}}{{ include "mutirao.fullname" . }}-orchestrator{{- end }}
{{- define "mutirao.orchestrator.headless" -}}{{ include "mutirao.fullname" . }}-orchestrator-headless{{- end }}
{{- define "mutirao.worker.name" -}}{{ include "mutirao.fullname" . }}-worker{{- end }}
{{- define "mutirao.operator.name" -}}{{ include "mutirao.fullname" . }}-operator{{- end }}
{{- define "mutirao.leaseName" -}}{{ include "mutirao.fullname" . }}-leader{{- end }}

{{- define "mutirao.joinTokenSecret" -}}
{{- default (printf "%s-join-token" (include "mutirao.fullname" .)) .Values.auth.joinToken.existingSecret }}
{{- end }}

{{/* The client Service URL (the leader), as seen from the release's namespace. */}}
{{- define "mutirao.orchestrator.serviceUrl" -}}
http://{{ include "mutirao.orchestrator.name" . }}:{{ .Values.orchestrator.port }}
{{- end }}

{{/* Every orchestrator pod's URL through the headless Service, comma-separated. */}}
{{- define "mutirao.orchestrator.podUrls" -}}
{{- $urls := list }}
{{- range $i := until (int .Values.orchestrator.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s:%d" (include "mutirao.orchestrator.name" $) $i (include "mutirao.orchestrator.headless" $) (int $.Values.orchestrator.port)) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{/* What workers try in turn: the leader Service first, then each orchestrator pod. */}}
{{- define "mutirao.worker.orchestratorUrls" -}}
{{- if .Values.workers.orchestratorUrls }}
{{- join "," .Values.workers.orchestratorUrls }}
{{- else }}
{{- include "mutirao.orchestrator.serviceUrl" . }},{{ include "mutirao.orchestrator.podUrls" . }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is given (it pins the image), else repository:tag. */}}
{{- define "mutirao.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "mutirao.worker.image" -}}
{{- $own := .Values.workers.image }}
{{- $repository := default .Values.image.repository $own.repository }}
{{- $digest := $own.digest }}
{{- if and (not $digest) (eq $repository .Values.image.repository) (not $own.tag) }}
{{- $digest = .Values.image.digest }}
{{- end }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $own.tag }}
{{- include "mutirao.image" (dict "root" . "image" (dict "repository" $repository "tag" $tag "digest" $digest)) }}
{{- end }}

{{/* prometheus.io annotations for a pod serving /metrics on `port`. */}}
{{- define "mutirao.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* MUTIRAO_* variables shared by orchestrators and workers. */}}
{{- define "mutirao.commonEnv" -}}
- name: MUTIRAO_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
- name: MUTIRAO_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: MUTIRAO_LOG_DIR
  value: /var/log/mutirao
- name: MUTIRAO_HEARTBEAT_INTERVAL
  value: {{ .Values.heartbeat.intervalSeconds | quote }}
- name: MUTIRAO_HEARTBEAT_TIMEOUT
  value: {{ .Values.heartbeat.timeoutSeconds | quote }}
{{- end }}


{{/* The namespaces a namespaced operator watches, comma-separated: operator.watchNamespaces
plus the release's own, where the orchestrators' Lease is (kopf watches every resource in the
same namespaces). */}}
{{- define "mutirao.operator.namespaces" -}}
{{- uniq (append .Values.operator.watchNamespaces .Release.Namespace) | join "," }}
{{- end }}

{{/* What the operator does to Tasks: watch them, keep finalizers and status, post Events. */}}
{{- define "mutirao.operator.taskRules" -}}
- apiGroups: ["mutirao.dev"]
  resources: ["tasks"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["mutirao.dev"]
  resources: ["tasks/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Checks across values that values.schema.json cannot express. */}}
{{- define "mutirao.validate" -}}
{{- if ge (float64 .Values.orchestrator.lease.renewIntervalSeconds) (float64 .Values.orchestrator.lease.durationSeconds) }}
{{- fail "orchestrator.lease.renewIntervalSeconds must be shorter than orchestrator.lease.durationSeconds" }}
{{- end }}
{{- if ge (float64 .Values.heartbeat.intervalSeconds) (float64 .Values.heartbeat.timeoutSeconds) }}
{{- fail "heartbeat.intervalSeconds must be shorter than heartbeat.timeoutSeconds" }}
{{- end }}
{{- if and .Values.orchestrator.service.nodePort (eq .Values.orchestrator.service.type "ClusterIP") }}
{{- fail "orchestrator.service.nodePort needs orchestrator.service.type NodePort or LoadBalancer" }}
{{- end }}
{{- end }}
