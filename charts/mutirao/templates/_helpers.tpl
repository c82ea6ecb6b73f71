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

{{/* The Secret of a role's certificate (keys tls.crt, tls.key, ca.crt), made by cert-manager
or by the hook Job: include with (dict "ctx" $ "component" "worker"). */}}
{{- define "mutirao.tls.secret" -}}{{ include "mutirao.fullname" .ctx }}-{{ .component }}-tls{{- end }}

{{/* cert-manager or the hook Job, as tls.provider says ("auto": cert-manager when the
cluster serves its API). */}}
{{- define "mutirao.tls.provider" -}}
{{- if eq .Values.tls.provider "auto" }}
{{- .Capabilities.APIVersions.Has "cert-manager.io/v1/Certificate" | ternary "cert-manager" "job" }}
{{- else }}
{{- .Values.tls.provider }}
{{- end }}
{{- end }}

{{/* The names each component's certificate is valid for, one per line. */}}
{{- define "mutirao.tls.hosts" -}}
{{- $ns := .ctx.Release.Namespace }}
{{- if eq .component "orchestrator" }}
{{- $svc := include "mutirao.orchestrator.name" .ctx }}
{{- $hosts := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "*.%s" (include "mutirao.orchestrator.podDomain" .ctx)) }}
{{- concat $hosts .ctx.Values.tls.extraHosts (list "localhost" "127.0.0.1") | uniq | join "\n" }}
{{- else }}
{{- $name := include "mutirao.worker.name" .ctx }}
{{- list $name (printf "%s.%s.svc" $name $ns) "localhost" "127.0.0.1" | join "\n" }}
{{- end }}
{{- end }}

{{/* MUTIRAO_TLS_* of a node (.component: orchestrator or worker), with its Secret mounted at /etc/mutirao/tls. */}}
{{- define "mutirao.tls.env" -}}
{{- if .ctx.Values.tls.enabled }}
- name: MUTIRAO_TLS_CERT
  value: /etc/mutirao/tls/tls.crt
- name: MUTIRAO_TLS_KEY
  value: /etc/mutirao/tls/tls.key
- name: MUTIRAO_TLS_CA
  value: /etc/mutirao/tls/ca.crt
- name: MUTIRAO_TLS_CLIENT_AUTH
  value: {{ .ctx.Values.tls.clientAuth | quote }}
{{- end }}
{{- end }}

{{/* The volume of a component's certificate Secret; with caOnly, just the authorities (ca.crt). */}}
{{- define "mutirao.tls.volume" -}}
{{- if .ctx.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "mutirao.tls.secret" . }}
    defaultMode: 0440
    {{- if .caOnly }}
    items:
      - key: ca.crt
        path: ca.crt
    {{- end }}
{{- end }}
{{- end }}

{{- define "mutirao.tls.mount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/mutirao/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "mutirao.joinTokenSecret" -}}
{{- default (printf "%s-join-token" (include "mutirao.fullname" .)) .Values.auth.joinToken.existingSecret }}
{{- end }}

{{/* The client Service URL (the leader), as seen from the release's namespace. */}}
{{- define "mutirao.orchestrator.serviceUrl" -}}
{{ include "mutirao.scheme" . }}://{{ include "mutirao.orchestrator.name" . }}:{{ .Values.orchestrator.port }}
{{- end }}

{{/* https with TLS on, else http. */}}
{{- define "mutirao.scheme" -}}{{ .Values.tls.enabled | ternary "https" "http" }}{{- end }}

{{/* An orchestrator pod's DNS name: <pod>.<headless>.<namespace>.svc, which the
certificate's wildcard *.<headless>.<namespace>.svc covers however many replicas run. */}}
{{- define "mutirao.orchestrator.podDomain" -}}
{{ include "mutirao.orchestrator.headless" . }}.{{ .Release.Namespace }}.svc
{{- end }}

{{/* Every orchestrator pod's URL through the headless Service, comma-separated. */}}
{{- define "mutirao.orchestrator.podUrls" -}}
{{- $urls := list }}
{{- range $i := until (int .Values.orchestrator.replicas) }}
{{- $urls = append $urls (printf "%s://%s-%d.%s:%d" (include "mutirao.scheme" $) (include "mutirao.orchestrator.name" $) $i (include "mutirao.orchestrator.podDomain" $) (int $.Values.orchestrator.port)) }}
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

{{/* prometheus.io annotations for a pod serving /metrics on `port` (over https when
`tls` is true). */}}
{{- define "mutirao.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- if .tls }}
prometheus.io/scheme: https
{{- end }}
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
  resources: ["tasks", "schedules"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["mutirao.dev"]
  resources: ["tasks/status", "schedules/status"]
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
{{- if ge (int .Values.tls.renewBeforeDays) (int .Values.tls.certificateDays) }}
{{- fail "tls.renewBeforeDays must be shorter than tls.certificateDays" }}
{{- end }}
{{- if and .Values.tls.certManager.issuerRef (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef needs a name" }}
{{- end }}
{{- if and .Values.orchestrator.service.nodePort (eq .Values.orchestrator.service.type "ClusterIP") }}
{{- fail "orchestrator.service.nodePort needs orchestrator.service.type NodePort or LoadBalancer" }}
{{- end }}
{{- end }}

{{/* The pod of the certificate Job (`mutirao tls-secrets`): .ctx, .serviceAccount. */}}
{{- define "mutirao.tls.jobPod" -}}
{{- $root := .ctx -}}
metadata:
  labels:
    {{- include "mutirao.selectorLabels" (dict "ctx" $root "component" "tls") | nindent 4 }}
spec:
  serviceAccountName: {{ .serviceAccount }}
  restartPolicy: Never
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: tls-secrets
      image: {{ include "mutirao.image" (dict "root" $root "image" $root.Values.image) | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        - tls-secrets
        - --namespace={{ $root.Release.Namespace }}
        - --prefix={{ include "mutirao.fullname" $root }}
        {{- range $component := list "orchestrator" "worker" }}
        {{- range splitList "\n" (include "mutirao.tls.hosts" (dict "ctx" $root "component" $component)) }}
        - --{{ $component }}-host={{ . }}
        {{- end }}
        {{- end }}
        - --days={{ $root.Values.tls.certificateDays }}
        - --renew-before-days={{ $root.Values.tls.renewBeforeDays }}
        - --label=app.kubernetes.io/instance={{ $root.Release.Name }}
        - --label=app.kubernetes.io/part-of=mutirao
      resources:
        requests:
          cpu: 50m
          memory: 64Mi
        limits:
          memory: 256Mi
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir: {}
{{- end }}

{{/* What the certificate Job may do: read and rewrite the chart's three certificate Secrets
(by name) and create them (create cannot be limited to names). .ctx, .name, .hook. */}}
{{- define "mutirao.tls.jobRbac" -}}
{{- $root := .ctx }}
{{- $meta := dict "ctx" $root "component" "tls" }}
{{- range $kind := list "ServiceAccount" "Role" "RoleBinding" }}
---
apiVersion: {{ eq $kind "ServiceAccount" | ternary "v1" "rbac.authorization.k8s.io/v1" }}
kind: {{ $kind }}
metadata:
  name: {{ $.name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "mutirao.componentLabels" $meta | nindent 4 }}
  {{- if $.hook }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: "-10"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
  {{- end }}
{{- if eq $kind "Role" }}
rules:
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "update"]
    resourceNames:
      - {{ include "mutirao.fullname" $root }}-ca
      - {{ include "mutirao.tls.secret" (dict "ctx" $root "component" "orchestrator") }}
      - {{ include "mutirao.tls.secret" (dict "ctx" $root "component" "worker") }}
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["create"]
{{- else if eq $kind "RoleBinding" }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $.name }}
subjects:
  - kind: ServiceAccount
    name: {{ $.name }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end }}
{{- end }}

{{/* "gpu=1,memory=16Gi": workers.capacity as MUTIRAO_WORKER_RESOURCES (sorted by name). */}}
{{- define "mutirao.worker.capacity" -}}
{{- $pairs := list }}
{{- range $name, $amount := .Values.workers.capacity }}
{{- $pairs = append $pairs (printf "%s=%v" $name $amount) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* "true" when an autoscaler owns the workers' replica count (then the Deployment has none). */}}
{{- define "mutirao.worker.autoscaled" -}}
{{- $scaling := .Values.workers.autoscaling }}
{{- if and $scaling.hpa.enabled $scaling.keda.enabled }}
{{- fail "workers.autoscaling: enable the HPA or KEDA, not both (they would fight over the replicas)" }}
{{- end }}
{{- if or $scaling.hpa.enabled $scaling.keda.enabled }}true{{ end }}
{{- end }}

{{/* The queues the workers serve, as a PromQL regex ("default" when none is set). */}}
{{- define "mutirao.worker.queueRegex" -}}
{{- join "|" (.Values.workers.queues | default (list "default")) }}
{{- end }}
