{{/*
Helpers of the rolegate chart: names, labels, the image, the watched namespaces, the pieces
the operator and gateway pods share, and the checks the schema cannot express.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "rolegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart> (just <release> when it holds the chart name), or fullnameOverride;
at most 40 characters, so "<fullname>-gateway-config" and the like stay valid names. */}}
{{- define "rolegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* helm.sh/chart: <chart>-<version>. */}}
{{- define "rolegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "gateway"). Only these
three select pods, so labels that change (version, chart) never break a selector. */}}
{{- define "rolegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rolegate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of one component's objects: (dict "ctx" $ "component" "gateway"). */}}
{{- define "rolegate.labels" -}}
{{ include "rolegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: rolegate
helm.sh/chart: {{ include "rolegate.chart" .ctx }}
{{- end }}

{{/* The image reference: repository:tag, the tag defaulting to the appVersion. */}}
{{- define "rolegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Names of the objects the components share. */}}
{{- define "rolegate.operatorName" -}}
{{- printf "%s-operator" (include "rolegate.fullname" .) }}
{{- end }}
{{- define "rolegate.gatewayName" -}}
{{- printf "%s-gateway" (include "rolegate.fullname" .) }}
{{- end }}
{{/* The ServiceAccount of the `helm test` pod (gateway.auth.mode kubernetes). */}}
{{- define "rolegate.testName" -}}
{{- printf "%s-test" (include "rolegate.fullname" .) }}
{{- end }}
{{/* The Secret the operator writes the gateway's config to (credentials included). */}}
{{- define "rolegate.configSecret" -}}
{{- printf "%s-gateway-config" (include "rolegate.fullname" .) }}
{{- end }}

{{/* The operator's leader Lease, in the release namespace. */}}
{{- define "rolegate.leaderLease" -}}
{{- include "rolegate.operatorName" . }}
{{- end }}
{{/* The single-node Valkey of concurrency.valkey (StatefulSet and Service). */}}
{{- define "rolegate.valkeyName" -}}
{{- printf "%s-valkey" (include "rolegate.fullname" .) }}
{{- end }}
{{/* "true" when the gateway holds maxAsync with a store (concurrency.store or valkey). */}}
{{- define "rolegate.concurrencyStore" -}}
{{- $c := .Values.concurrency }}
{{- if or $c.store.url $c.store.existingSecret.name $c.valkey.enabled }}
{{- true }}
{{- end }}
{{- end }}
{{/* "true" when the gateway gets a PodDisruptionBudget (gateway.pdb.enabled; null: when
gateway.replicas > 1). */}}
{{- define "rolegate.gatewayPdb" -}}
{{- $pdb := .Values.gateway.pdb }}
{{- if kindIs "invalid" $pdb.enabled }}
{{- if gt (int .Values.gateway.replicas) 1 }}{{ true }}{{ end }}
{{- else if $pdb.enabled }}
{{- true }}
{{- end }}
{{- end }}

{{/* "true" when the operator watches every namespace (watchNamespaces: ["*"]). */}}
{{- define "rolegate.allNamespaces" -}}
{{- if has "*" .Values.watchNamespaces }}
{{- if gt (len .Values.watchNamespaces) 1 }}
{{- fail "watchNamespaces: \"*\" (every namespace) goes alone, not with namespace names" }}
{{- end }}
{{- true }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches (a list): watchNamespaces, or the release namespace
when it is empty. Not used with "*". */}}
{{- define "rolegate.watchedNamespaces" -}}
{{- toJson (.Values.watchNamespaces | default (list .Release.Namespace)) }}
{{- end }}

{{/* Checks across values that the schema cannot say in words a person reads. */}}
{{- define "rolegate.validate" -}}
{{- $api := .Values.apiServer }}
{{- if and $api.host (not $api.port) }}
{{- fail "apiServer: host is set without port; set both (or neither)" }}
{{- end }}
{{- if and $api.port (not $api.host) }}
{{- fail "apiServer: port is set without host; set both (or neither)" }}
{{- end }}
{{- $pdb := .Values.gateway.pdb }}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "gateway.pdb: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- $c := .Values.concurrency }}
{{- if and $c.store.url $c.store.existingSecret.name }}
{{- fail "concurrency.store: set url or existingSecret.name, not both" }}
{{- end }}
{{- if and $c.valkey.enabled (or $c.store.url $c.store.existingSecret.name) }}
{{- fail "concurrency: valkey.enabled runs a store of the chart's own; leave store.url and store.existingSecret.name empty with it" }}
{{- end }}
{{- $le := .Values.operator.leaderElection }}
{{- if and (gt (int .Values.operator.replicas) 1) (not $le.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: every replica would write" }}
{{- end }}
{{- if not (and (lt (float64 $le.retryPeriod) (float64 $le.renewDeadline)) (lt (float64 $le.renewDeadline) (float64 $le.leaseDuration))) }}
{{- fail "operator.leaderElection: retryPeriod < renewDeadline < leaseDuration, as in client-go" }}
{{- end }}
{{- if not (lt (float64 .Values.gateway.presenceRenew) (float64 .Values.gateway.presenceLeaseDuration)) }}
{{- fail "gateway.presenceRenew must be shorter than gateway.presenceLeaseDuration" }}
{{- end }}
{{- if and .Values.hostNetwork (eq (int .Values.operator.livenessPort) (int .Values.gateway.port)) }}
{{- fail "operator.livenessPort equals gateway.port with hostNetwork: the two pods would want one port of the node" }}
{{- end }}
{{- if and .Values.hostNetwork (gt (int .Values.gateway.replicas) 1) (not .Values.gateway.affinity) }}
{{- fail "gateway.replicas > 1 with hostNetwork: the replicas would share gateway.port on one node; set gateway.affinity to spread them (podAntiAffinity on kubernetes.io/hostname)" }}
{{- end }}
{{- end }}

{{/* Environment of the operator and gateway containers. */}}
{{- define "rolegate.env" -}}
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
# The pod's name: the identity of the operator's leader Lease and of a gateway's own Lease;
# its uid: the gateway's Lease is owned by its pod (garbage-collected with it).
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
{{- with .Values.apiServer }}
{{- if .host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .port | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod-level fields every pod of the chart shares (hostNetwork, pull secrets, security). */}}
{{- define "rolegate.podCommon" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Scheduling of one component's pods: pass .Values.operator or .Values.gateway. */}}
{{- define "rolegate.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The writable /tmp of a read-only root filesystem: the volume and its mount. */}}
{{- define "rolegate.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- define "rolegate.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
