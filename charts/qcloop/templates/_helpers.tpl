{{/* vim: set filetype=mustache: */}}
{{/*
Names are truncated to 63 characters: some Kubernetes name fields are limited to
this (DNS-1123 labels).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "qcloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<chart>` (or fullnameOverride); the release name alone when it already holds the chart name. */}}
{{- define "qcloop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* `<fullname>-<component>`, 63 characters at most. Call with (dict "context" $ "component" "minio"). */}}
{{- define "qcloop.component.fullname" -}}
{{- printf "%s-%s" (include "qcloop.fullname" .context | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qcloop.minio.fullname" -}}
{{- include "qcloop.component.fullname" (dict "context" . "component" "minio") -}}
{{- end -}}

{{- define "qcloop.mlflow.fullname" -}}
{{- include "qcloop.component.fullname" (dict "context" . "component" "mlflow") -}}
{{- end -}}

{{- define "qcloop.mosquitto.fullname" -}}
{{- include "qcloop.component.fullname" (dict "context" . "component" "mosquitto") -}}
{{- end -}}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "qcloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. Call with (dict "context" $ "component" "minio"). */}}
{{- define "qcloop.labels" -}}
helm.sh/chart: {{ include "qcloop.chart" .context }}
{{ include "qcloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: qcloop
{{- end -}}

{{/* Labels a Deployment selects its pods by. Call with (dict "context" $ "component" "minio"). */}}
{{- define "qcloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qcloop.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* `image: repository:tag`. Call with an image values block. */}}
{{- define "qcloop.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* A PVC spec body. Call with (dict "context" $ "persistence" .Values.minio.persistence). */}}
{{- define "qcloop.pvcSpec" -}}
accessModes:
  - ReadWriteOnce
{{- with .persistence.storageClass }}
storageClassName: {{ ternary "" . (eq "-" .) | quote }}
{{- end }}
resources:
  requests:
    storage: {{ .persistence.size | quote }}
{{- end -}}

{{/* The volume source of a data volume: the PVC, or an emptyDir when persistence is off. */}}
{{- define "qcloop.dataVolumeSource" -}}
{{- if .persistence.enabled -}}
persistentVolumeClaim:
  claimName: {{ default .claimName .persistence.existingClaim }}
{{- else -}}
emptyDir: {}
{{- end -}}
{{- end -}}

{{/* ---- MinIO ---- */}}

{{/* Name of the Secret with the MinIO root credentials. */}}
{{- define "qcloop.minio.secretName" -}}
{{- default (include "qcloop.minio.fullname" .) .Values.minio.auth.existingSecret -}}
{{- end -}}

{{/* In-cluster S3 endpoint of the chart's MinIO. */}}
{{- define "qcloop.minio.endpoint" -}}
{{- printf "http://%s:%d" (include "qcloop.minio.fullname" .) (int .Values.minio.service.apiPort) -}}
{{- end -}}

{{/* The buckets to create: minio.buckets plus the MLflow artifact bucket when MLflow stores in this MinIO. */}}
{{- define "qcloop.minio.bucketList" -}}
{{- $buckets := .Values.minio.buckets -}}
{{- if and .Values.mlflow.enabled (not .Values.mlflow.artifacts.s3Endpoint) -}}
{{- $buckets = append $buckets .Values.mlflow.artifacts.bucket -}}
{{- end -}}
{{- $buckets | uniq | join " " -}}
{{- end -}}

{{/* ---- MLflow ---- */}}

{{/* S3 endpoint of the artifact store: the explicit one, or this chart's MinIO. */}}
{{- define "qcloop.mlflow.s3Endpoint" -}}
{{- if .Values.mlflow.artifacts.s3Endpoint -}}
{{- .Values.mlflow.artifacts.s3Endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- include "qcloop.minio.endpoint" . -}}
{{- else -}}
{{- required "mlflow.artifacts.s3Endpoint is required when minio.enabled is false" .Values.mlflow.artifacts.s3Endpoint -}}
{{- end -}}
{{- end -}}

{{/* Secret with the S3 credentials of the artifact store. */}}
{{- define "qcloop.mlflow.s3SecretName" -}}
{{- if .Values.mlflow.artifacts.existingSecret -}}
{{- .Values.mlflow.artifacts.existingSecret -}}
{{- else if .Values.minio.enabled -}}
{{- include "qcloop.minio.secretName" . -}}
{{- else -}}
{{- required "mlflow.artifacts.existingSecret is required when minio.enabled is false" .Values.mlflow.artifacts.existingSecret -}}
{{- end -}}
{{- end -}}

{{/*
Host headers the server accepts (MLflow >= 3.5 rejects others against DNS rebinding):
localhost (port-forward) and the Service's in-cluster names, each with any port.
*/}}
{{- define "qcloop.mlflow.allowedHosts" -}}
{{- $svc := include "qcloop.mlflow.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list -}}
{{- range $name := list "localhost" "127.0.0.1" $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $hosts = append (append $hosts $name) (printf "%s:*" $name) -}}
{{- end -}}
{{- concat $hosts .Values.mlflow.extraAllowedHosts | join "," -}}
{{- end -}}

{{/* ---- Mosquitto ---- */}}

{{/* Secret with the plain MQTT user name and password (not used with existingPasswordFileSecret). */}}
{{- define "qcloop.mosquitto.secretName" -}}
{{- default (include "qcloop.mosquitto.fullname" .) .Values.mosquitto.auth.existingSecret -}}
{{- end -}}

{{/* Whether the chart turns a plain user/password Secret into the password file (init container). */}}
{{- define "qcloop.mosquitto.hashesPassword" -}}
{{- if not .Values.mosquitto.auth.existingPasswordFileSecret -}}true{{- end -}}
{{- end -}}

{{/* ---- Validation ---- */}}

{{/*
Fail with every missing or invalid value at once, so a first install does not take one
round trip per value. The templates keep their own `required` guards as well.
*/}}
{{- define "qcloop.validateValues" -}}
{{- $errors := list -}}
{{- $minio := .Values.minio -}}
{{- if and $minio.enabled (not $minio.auth.existingSecret) -}}
{{- if not $minio.auth.rootPassword -}}
{{- $errors = append $errors "minio.auth.rootPassword is required (or set minio.auth.existingSecret): no default password is shipped" -}}
{{- else if lt (len $minio.auth.rootPassword) 8 -}}
{{- $errors = append $errors "minio.auth.rootPassword must have 8 characters at least (MinIO refuses shorter ones)" -}}
{{- end -}}
{{- end -}}
{{- $auth := .Values.mosquitto.auth -}}
{{- if and .Values.mosquitto.enabled (not $auth.existingSecret) (not $auth.existingPasswordFileSecret) (not $auth.password) -}}
{{- $errors = append $errors "mosquitto.auth.password is required (or set mosquitto.auth.existingSecret or mosquitto.auth.existingPasswordFileSecret): no default password is shipped" -}}
{{- end -}}
{{- if and .Values.mlflow.enabled (not $minio.enabled) -}}
{{- if not .Values.mlflow.artifacts.s3Endpoint -}}
{{- $errors = append $errors "mlflow.artifacts.s3Endpoint is required when minio.enabled is false" -}}
{{- end -}}
{{- if not .Values.mlflow.artifacts.existingSecret -}}
{{- $errors = append $errors "mlflow.artifacts.existingSecret is required when minio.enabled is false" -}}
{{- end -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\nVALUES VALIDATION:\n  %s" (join "\n  " $errors)) -}}
{{- end -}}
{{- end -}}
