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

{{/* A CronJob's name: 52 characters at most (its Jobs add an 11-character suffix). Call like qcloop.component.fullname. */}}
{{- define "qcloop.cronjob.fullname" -}}
{{- printf "%s-%s" (include "qcloop.fullname" .context | trunc (int (sub 51 (len .component))) | trimSuffix "-") .component | trunc 52 | trimSuffix "-" -}}
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

{{- define "qcloop.labelStudio.fullname" -}}
{{- include "qcloop.component.fullname" (dict "context" . "component" "label-studio") -}}
{{- end -}}

{{- define "qcloop.bridge.fullname" -}}
{{- include "qcloop.component.fullname" (dict "context" . "component" "release-bridge") -}}
{{- end -}}

{{/* The ServiceAccount of a workload. Call with (dict "context" $ "component" "minio"). */}}
{{- define "qcloop.serviceAccountName" -}}
{{- if .context.Values.serviceAccount.create -}}
{{- include "qcloop.component.fullname" . -}}
{{- else -}}
default
{{- end -}}
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

{{/*
In-cluster S3 endpoint of the chart's MinIO: `<svc>.<namespace>.svc`, so that it resolves from
the Kubeflow Pipelines run pods in other namespaces too (the endpoints travel in settings_json).
*/}}
{{- define "qcloop.minio.endpoint" -}}
{{- printf "http://%s.%s.svc:%d" (include "qcloop.minio.fullname" .) .Release.Namespace (int .Values.minio.service.apiPort) -}}
{{- end -}}

{{/* The buckets to create: minio.buckets, the platform bucket, and the MLflow artifact bucket when MLflow stores in this MinIO. */}}
{{- define "qcloop.minio.bucketList" -}}
{{- $buckets := append .Values.minio.buckets .Values.platform.bucket -}}
{{- if and .Values.mlflow.enabled (not .Values.mlflow.artifacts.s3Endpoint) -}}
{{- $buckets = append $buckets .Values.mlflow.artifacts.bucket -}}
{{- end -}}
{{- $buckets | uniq | join " " -}}
{{- end -}}

{{/* ---- Scoped MinIO users: one a role, each on its own prefixes ---- */}}

{{- define "qcloop.minio.roles" -}}edge bridge labelling pipelines mlflow{{- end -}}

{{/* "true" when the workloads use the scoped users: the chart's MinIO with minio.users.enabled. */}}
{{- define "qcloop.minio.scoped" -}}
{{- if and .Values.minio.enabled .Values.minio.users.enabled -}}true{{- end -}}
{{- end -}}

{{/* Secret with the scoped users' keys `<role>-access-key` and `<role>-secret-key`. */}}
{{- define "qcloop.minio.usersSecretName" -}}
{{- .Values.minio.users.existingSecret | default (printf "%s-users" (include "qcloop.minio.fullname" . | trunc 57 | trimSuffix "-")) -}}
{{- end -}}

{{/*
The policy of a role, as IAM JSON (MinIO's policy language): (dict "context" $ "role" "edge").
Object rights by prefix; listing (key names only) is bucket-wide for the cluster roles and
refused to edge boxes. GetBucketLocation: S3 clients ask for the region first.
*/}}
{{- define "qcloop.minio.policy" -}}
{{- $ := .context -}}
{{- $b := $.Values.platform.bucket -}}
{{- $obj := printf "arn:aws:s3:::%s/" $b -}}
{{- $read := list "s3:GetObject" -}}
{{- $write := list "s3:GetObject" "s3:PutObject" "s3:AbortMultipartUpload" -}}
{{- $statements := list (dict "Effect" "Allow" "Action" (list "s3:GetBucketLocation") "Resource" (list (printf "arn:aws:s3:::%s" $b))) -}}
{{- if eq .role "edge" -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (list "s3:PutObject") "Resource" (list (print $obj "raw/*"))) -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" $read "Resource" (list (print $obj "models/*"))) -}}
{{- else if eq .role "mlflow" -}}
{{- $m := $.Values.mlflow.artifacts.bucket -}}
{{- $prefix := $.Values.mlflow.artifacts.prefix | trimSuffix "/" -}}
{{- $statements = list (dict "Effect" "Allow" "Action" (list "s3:GetBucketLocation" "s3:ListBucket") "Resource" (list (printf "arn:aws:s3:::%s" $m))) -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (append $write "s3:DeleteObject") "Resource" (list (printf "arn:aws:s3:::%s/%s*" $m (ternary "" (printf "%s/" $prefix) (empty $prefix))))) -}}
{{- else -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (list "s3:ListBucket") "Resource" (list (printf "arn:aws:s3:::%s" $b))) -}}
{{- if eq .role "bridge" -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" $write "Resource" (list (print $obj "models/*") (print $obj "releases/*"))) -}}
{{- else -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" $read "Resource" (list (print $obj "models/*"))) -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" $write "Resource" (list (print $obj "raw/*") (print $obj "datasets/*") (print $obj "dvc/*"))) -}}
{{- if eq .role "labelling" -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (append $write "s3:DeleteObject") "Resource" (list (print $obj ($.Values.labelStudio.storage.folder | trimSuffix "/") "/*"))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- dict "Version" "2012-10-17" "Statement" $statements | toJson -}}
{{- end -}}

{{/*
Where a workload of a role finds its store credentials, as YAML (secret, accessKey,
secretKey): the scoped user's keys, else the platform store's Secret (root user of the
chart's MinIO, or externalS3). Call with (dict "context" $ "role" "bridge").
*/}}
{{- define "qcloop.s3.credentials" -}}
{{- $ := .context -}}
{{- if include "qcloop.minio.scoped" $ -}}
secret: {{ include "qcloop.minio.usersSecretName" $ }}
accessKey: {{ printf "%s-access-key" .role }}
secretKey: {{ printf "%s-secret-key" .role }}
{{- else -}}
secret: {{ include "qcloop.s3.secretName" $ }}
accessKey: {{ include "qcloop.s3.accessKeyKey" $ }}
secretKey: {{ include "qcloop.s3.secretKeyKey" $ }}
{{- end -}}
{{- end -}}

{{/* ---- MLflow ---- */}}

{{/* S3 endpoint of the artifact store: the explicit one, else the store of the platform. */}}
{{- define "qcloop.mlflow.s3Endpoint" -}}
{{- .Values.mlflow.artifacts.s3Endpoint | default (include "qcloop.s3.endpoint" .) -}}
{{- end -}}

{{/* Secret with the S3 credentials of the artifact store and its two keys, as YAML (secret, accessKey, secretKey). */}}
{{- define "qcloop.mlflow.s3Credentials" -}}
{{- if .Values.mlflow.artifacts.existingSecret -}}
secret: {{ .Values.mlflow.artifacts.existingSecret }}
accessKey: {{ .Values.mlflow.artifacts.accessKeyKey }}
secretKey: {{ .Values.mlflow.artifacts.secretKeyKey }}
{{- else -}}
{{- include "qcloop.s3.credentials" (dict "context" . "role" "mlflow") -}}
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

{{/* Secret of MLflow's basic-auth app: admin, CSRF key and the platform's user (the chart's or existingSecret). */}}
{{- define "qcloop.mlflow.authSecretName" -}}
{{- .Values.mlflow.auth.existingSecret | default (printf "%s-auth" (include "qcloop.mlflow.fullname" . | trunc 58 | trimSuffix "-")) -}}
{{- end -}}

{{/*
Secret with keys `username` and `password` the platform's workloads log in to MLflow with
(MLFLOW_TRACKING_USERNAME/PASSWORD): the chart's MLflow with auth, or externalMlflow's; empty
when MLflow demands no login.
*/}}
{{- define "qcloop.mlflow.clientSecretName" -}}
{{- if .Values.mlflow.enabled -}}
{{- if .Values.mlflow.auth.enabled -}}{{- include "qcloop.mlflow.authSecretName" . -}}{{- end -}}
{{- else -}}
{{- .Values.externalMlflow.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* ---- Mosquitto ---- */}}

{{/* Secret with the plain MQTT user name and password (not used with existingPasswordFileSecret). */}}
{{- define "qcloop.mosquitto.secretName" -}}
{{- default (include "qcloop.mosquitto.fullname" .) .Values.mosquitto.auth.existingSecret -}}
{{- end -}}

{{/* Whether the chart creates the Secret of the bridge's MQTT user. */}}
{{- define "qcloop.mosquitto.createsSecret" -}}
{{- $auth := .Values.mosquitto.auth -}}
{{- if and (not $auth.existingSecret) (or $auth.password (not $auth.existingPasswordFileSecret)) -}}true{{- end -}}
{{- end -}}

{{/* Every device id of mosquitto.fleets, sorted, once each (space-separated). */}}
{{- define "qcloop.mosquitto.deviceIds" -}}
{{- $ids := list -}}
{{- range $fleet, $devices := .Values.mosquitto.fleets -}}
{{- $ids = concat $ids $devices -}}
{{- end -}}
{{- $ids | uniq | sortAlpha | join " " -}}
{{- end -}}

{{/* Secret with one key per device id (plain MQTT password). */}}
{{- define "qcloop.mosquitto.devicesSecretName" -}}
{{- .Values.mosquitto.auth.devices.existingSecret | default (printf "%s-devices" (include "qcloop.mosquitto.fullname" . | trunc 55 | trimSuffix "-")) -}}
{{- end -}}

{{/* Whether the chart creates the devices' password Secret. */}}
{{- define "qcloop.mosquitto.createsDevicesSecret" -}}
{{- $auth := .Values.mosquitto.auth -}}
{{- if and (not $auth.existingPasswordFileSecret) (not $auth.devices.existingSecret) (include "qcloop.mosquitto.deviceIds" .) -}}true{{- end -}}
{{- end -}}

{{/* Every operator of mosquitto.operators, sorted, once each (space-separated). */}}
{{- define "qcloop.mosquitto.operatorIds" -}}
{{- .Values.mosquitto.operators | default list | uniq | sortAlpha | join " " -}}
{{- end -}}

{{/* Secret with one key per operator (plain MQTT password). */}}
{{- define "qcloop.mosquitto.operatorsSecretName" -}}
{{- .Values.mosquitto.auth.operators.existingSecret | default (printf "%s-operators" (include "qcloop.mosquitto.fullname" . | trunc 53 | trimSuffix "-")) -}}
{{- end -}}

{{/* Whether the chart creates the operators' password Secret. */}}
{{- define "qcloop.mosquitto.createsOperatorsSecret" -}}
{{- $auth := .Values.mosquitto.auth -}}
{{- if and (not $auth.existingPasswordFileSecret) (not $auth.operators.existingSecret) (include "qcloop.mosquitto.operatorIds" .) -}}true{{- end -}}
{{- end -}}

{{/* Whether the broker is exposed outside the cluster (LoadBalancer or NodePort). */}}
{{- define "qcloop.mosquitto.external" -}}
{{- if ne .Values.mosquitto.service.type "ClusterIP" -}}true{{- end -}}
{{- end -}}

{{/* Whether the chart turns a plain user/password Secret into the password file (init container). */}}
{{- define "qcloop.mosquitto.hashesPassword" -}}
{{- if not .Values.mosquitto.auth.existingPasswordFileSecret -}}true{{- end -}}
{{- end -}}

{{/* ---- Object store of the platform: the chart's MinIO, else externalS3 ---- */}}

{{- define "qcloop.s3.endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- include "qcloop.minio.endpoint" . -}}
{{- else -}}
{{- required "externalS3.endpoint is required when minio.enabled is false" .Values.externalS3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "qcloop.s3.secretName" -}}
{{- if .Values.minio.enabled -}}
{{- include "qcloop.minio.secretName" . -}}
{{- else -}}
{{- required "externalS3.existingSecret is required when minio.enabled is false" .Values.externalS3.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "qcloop.s3.accessKeyKey" -}}
{{- ternary "root-user" .Values.externalS3.accessKeyKey .Values.minio.enabled -}}
{{- end -}}

{{- define "qcloop.s3.secretKeyKey" -}}
{{- ternary "root-password" .Values.externalS3.secretKeyKey .Values.minio.enabled -}}
{{- end -}}

{{/* ---- Endpoints the qcloop workloads talk to: the chart's parts, else the external ones ---- */}}

{{- define "qcloop.mlflow.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "qcloop.mlflow.fullname" .) .Release.Namespace (int .Values.mlflow.service.port) -}}
{{- else -}}
{{- required "externalMlflow.trackingUri is required when mlflow.enabled is false" .Values.externalMlflow.trackingUri -}}
{{- end -}}
{{- end -}}

{{- define "qcloop.mqtt.url" -}}
{{- if .Values.mosquitto.enabled -}}
{{- printf "mqtt://%s.%s.svc:%d" (include "qcloop.mosquitto.fullname" .) .Release.Namespace (int .Values.mosquitto.service.port) -}}
{{- else -}}
{{- required "externalBroker.url is required when mosquitto.enabled is false" .Values.externalBroker.url -}}
{{- end -}}
{{- end -}}

{{/* Secret with keys username/password of the bridge's MQTT user. */}}
{{- define "qcloop.mqtt.secretName" -}}
{{- if .Values.mosquitto.enabled -}}
{{- include "qcloop.mosquitto.secretName" . -}}
{{- else -}}
{{- required "externalBroker.existingSecret is required when mosquitto.enabled is false" .Values.externalBroker.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "qcloop.labelStudio.url" -}}
{{- if .Values.labelStudio.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "qcloop.labelStudio.fullname" .) .Release.Namespace (int .Values.labelStudio.service.port) -}}
{{- else -}}
{{- required "externalLabelStudio.url is required when labelStudio.enabled is false" .Values.externalLabelStudio.url -}}
{{- end -}}
{{- end -}}

{{/* Secret with key `token` of the Label Studio API. */}}
{{- define "qcloop.labelStudio.tokenSecretName" -}}
{{- if .Values.labelStudio.enabled -}}
{{- include "qcloop.labelStudio.adminSecretName" . -}}
{{- else -}}
{{- required "externalLabelStudio.existingSecret is required when labelStudio.enabled is false" .Values.externalLabelStudio.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "qcloop.labelStudio.adminSecretName" -}}
{{- default (include "qcloop.labelStudio.fullname" .) .Values.labelStudio.admin.existingSecret -}}
{{- end -}}

{{/* ---- The platform settings: the chart's pods and the Kubeflow pipeline runs ---- */}}

{{/*
The settings every qcloop process on the cluster reads (QCLOOP_<SECTION>__<FIELD>), as YAML:
the data of the ConfigMap `qcloop-platform` of each run namespace and the env of the chart's
own pods, from this one place. The pipelines read exactly these keys (pipelines/training.py
CONFIG_ENV); a key without a value is rendered empty (qcloop takes empty as unset), since
Kubeflow Pipelines before 2.15 cannot mark a key optional.
*/}}
{{- define "qcloop.platform.config" -}}
{{- $endpoint := include "qcloop.s3.endpoint" . -}}
{{- $region := ternary "" .Values.externalS3.region .Values.minio.enabled -}}
{{- $labelStudio := "" -}}
{{- if or .Values.labelStudio.enabled .Values.externalLabelStudio.url -}}
{{- $labelStudio = include "qcloop.labelStudio.url" . -}}
{{- end -}}
QCLOOP_HOME: /tmp/qcloop
QCLOOP_WORKSPACE: /tmp/qcloop/workspace
QCLOOP_STORE__KIND: s3
QCLOOP_STORE__ENDPOINT: {{ $endpoint | quote }}
QCLOOP_STORE__BUCKET: {{ .Values.platform.bucket | quote }}
QCLOOP_STORE__REGION: {{ $region | quote }}
QCLOOP_DVC__REMOTE: {{ printf "s3://%s/dvc" .Values.platform.bucket | quote }}
QCLOOP_DVC__ENDPOINT_URL: {{ $endpoint | quote }}
QCLOOP_MLFLOW__TRACKING_URI: {{ include "qcloop.mlflow.trackingUri" . | quote }}
QCLOOP_MLFLOW__MODEL_NAME: {{ .Values.platform.modelName | quote }}
QCLOOP_LABEL_STUDIO__URL: {{ $labelStudio | quote }}
{{- end -}}

{{/*
The data of the Secret `qcloop-platform` of each run namespace, as YAML of base64 values: the
store's credentials (the scoped `pipelines` MinIO user), the platform's MLflow user (empty without MLflow auth) and the Label Studio token, from the values when the chart makes those
Secrets, else read (lookup) from the existing Secrets at install time. Installing into a
cluster where one cannot be read fails with what to do. Rendered without a cluster (helm
template, a client-side dry run: lookup reads nothing, not even the release's namespace),
the key `unreadable` names them instead, and the Secret is left out.
*/}}
{{- define "qcloop.pipelines.credentials" -}}
{{- $ns := .Release.Namespace -}}
{{- $live := lookup "v1" "Namespace" "" $ns -}}
{{- $data := dict -}}
{{- $unreadable := list -}}
{{- $wanted := list -}}
{{- if and (include "qcloop.minio.scoped" .) (not .Values.minio.users.existingSecret) -}}
{{- $_ := set $data "store-access-key" (.Values.minio.users.pipelines.accessKey | b64enc) -}}
{{- $_ := set $data "store-secret-key" (.Values.minio.users.pipelines.secretKey | b64enc) -}}
{{- else if and .Values.minio.enabled (not .Values.minio.users.enabled) (not .Values.minio.auth.existingSecret) -}}
{{- $_ := set $data "store-access-key" (.Values.minio.auth.rootUser | b64enc) -}}
{{- $_ := set $data "store-secret-key" (.Values.minio.auth.rootPassword | b64enc) -}}
{{- else -}}
{{- $s3 := include "qcloop.s3.credentials" (dict "context" . "role" "pipelines") | fromYaml -}}
{{- $wanted = append $wanted (dict "secret" $s3.secret "keys" (dict "store-access-key" $s3.accessKey "store-secret-key" $s3.secretKey)) -}}
{{- end -}}
{{- $mlflowSecret := include "qcloop.mlflow.clientSecretName" . -}}
{{- if and .Values.mlflow.enabled .Values.mlflow.auth.enabled (not .Values.mlflow.auth.existingSecret) -}}
{{- $_ := set $data "mlflow-username" (.Values.mlflow.auth.username | b64enc) -}}
{{- $_ := set $data "mlflow-password" (.Values.mlflow.auth.password | b64enc) -}}
{{- else if $mlflowSecret -}}
{{- $wanted = append $wanted (dict "secret" $mlflowSecret "keys" (dict "mlflow-username" "username" "mlflow-password" "password")) -}}
{{- else -}}
{{- $_ := set $data "mlflow-username" "" -}}
{{- $_ := set $data "mlflow-password" "" -}}
{{- end -}}
{{- if and .Values.labelStudio.enabled (not .Values.labelStudio.admin.existingSecret) -}}
{{- $_ := set $data "label-studio-token" (.Values.labelStudio.admin.token | b64enc) -}}
{{- else if or .Values.labelStudio.enabled .Values.externalLabelStudio.existingSecret -}}
{{- $wanted = append $wanted (dict "secret" (include "qcloop.labelStudio.tokenSecretName" .) "keys" (dict "label-studio-token" "token")) -}}
{{- else -}}
{{- $_ := set $data "label-studio-token" "" -}}
{{- end -}}
{{- range $want := $wanted -}}
{{- $found := (lookup "v1" "Secret" $ns $want.secret).data | default dict -}}
{{- range $key, $from := $want.keys -}}
{{- $value := index $found $from | default "" -}}
{{- if $value -}}
{{- $_ := set $data $key $value -}}
{{- else if $live -}}
{{- fail (printf "\npipelines.credentials.create: the chart copies key %s of Secret %s (namespace %s) into the Secret qcloop-platform of %s, but it is not there. Create it before `helm install`, or give the credentials as values (secrets.yaml, docs/deploy.md), or set pipelines.credentials.create=false and create the Secret qcloop-platform in each of those namespaces yourself (keys store-access-key, store-secret-key, mlflow-username, mlflow-password, label-studio-token)." $from $want.secret $ns (join ", " $.Values.pipelines.namespaces)) -}}
{{- else -}}
{{- $unreadable = append $unreadable (printf "%s/%s" $want.secret $from) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $unreadable -}}
unreadable: {{ $unreadable | uniq | join ", " | quote }}
{{- else -}}
{{- toYaml $data -}}
{{- end -}}
{{- end -}}

{{/* Every namespace the servers admit besides this release: the allowed ones and the run namespaces. */}}
{{- define "qcloop.clientNamespaces" -}}
{{- concat .Values.networkPolicy.allowedNamespaces .Values.pipelines.namespaces | uniq | join " " -}}
{{- end -}}

{{/* The port of monitoring.pushgateway.url: the one it names, else its scheme's (80, 443). */}}
{{- define "qcloop.pushgateway.port" -}}
{{- $url := urlParse .Values.monitoring.pushgateway.url -}}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" -}}
{{- $port | default (ternary "443" "80" (eq $url.scheme "https")) -}}
{{- end -}}

{{/*
Environment of a qcloop container of the chart (bridge, schedules): the platform settings above,
the store's credentials and the MLflow login (when MLflow demands one) always; MQTT, the Label
Studio token and KFP when asked; the store's credentials are the scoped MinIO user of `role`.
Call with (dict "context" $ "role" "bridge" "mqtt" true "labelStudio" false "kfp" false).
*/}}
{{- define "qcloop.platform.env" -}}
{{- $ := .context -}}
{{- $s3 := include "qcloop.s3.credentials" (dict "context" $ "role" (required "qcloop.platform.env: role" .role)) | fromYaml -}}
- name: HOME
  value: /tmp
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
{{- range $name, $value := include "qcloop.platform.config" $ | fromYaml }}
{{- if $value }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
- name: QCLOOP_STORE__ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.secret }}
      key: {{ $s3.accessKey }}
- name: QCLOOP_STORE__SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.secret }}
      key: {{ $s3.secretKey }}
{{- with include "qcloop.mlflow.clientSecretName" $ }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: username
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: password
{{- end }}
{{- if .mqtt }}
{{- $mqttSecret := include "qcloop.mqtt.secretName" $ }}
- name: QCLOOP_MQTT__URL
  value: {{ include "qcloop.mqtt.url" $ | quote }}
- name: QCLOOP_MQTT__FLEET
  value: {{ $.Values.releaseBridge.fleet | quote }}
- name: QCLOOP_MQTT__USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $mqttSecret }}
      key: username
- name: QCLOOP_MQTT__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $mqttSecret }}
      key: password
{{- end }}
{{- if .labelStudio }}
- name: QCLOOP_LABEL_STUDIO__TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "qcloop.labelStudio.tokenSecretName" $ }}
      key: token
{{- end }}
{{- if .kfp }}
- name: KFP_HOST
  value: {{ $.Values.kfp.host | quote }}
{{- with $.Values.kfp.namespace }}
- name: KFP_NAMESPACE
  value: {{ . | quote }}
{{- end }}
# the pipelines it submits name this very image (their GPU step its -cuda variant)
- name: QCLOOP_PIPELINES__IMAGE
  value: {{ $.Values.platform.image.repository | quote }}
- name: QCLOOP_PIPELINES__IMAGE_TAG
  value: {{ $.Values.platform.image.tag | toString | quote }}
{{- end }}
{{- with $.Values.platform.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ---- Validation ---- */}}

{{/*
Fail with every missing or invalid value at once, so a first install does not take one
round trip per value. The templates keep their own `required` guards as well.
*/}}
{{- define "qcloop.validateValues" -}}
{{- $errors := list -}}
{{- $minio := .Values.minio -}}
{{- $usesStore := or (and .Values.mlflow.enabled (not .Values.mlflow.artifacts.s3Endpoint)) .Values.releaseBridge.enabled .Values.schedules.labelling.enabled .Values.schedules.retraining.enabled (and .Values.labelStudio.enabled .Values.labelStudio.storage.s3) -}}
{{- $usesMlflow := or .Values.releaseBridge.enabled .Values.schedules.labelling.enabled .Values.schedules.retraining.enabled -}}
{{- if and $minio.enabled (not $minio.auth.existingSecret) -}}
{{- if not $minio.auth.rootPassword -}}
{{- $errors = append $errors "minio.auth.rootPassword is required (or set minio.auth.existingSecret): no default password is shipped" -}}
{{- else if lt (len $minio.auth.rootPassword) 8 -}}
{{- $errors = append $errors "minio.auth.rootPassword must have 8 characters at least (MinIO refuses shorter ones)" -}}
{{- end -}}
{{- end -}}
{{- if and (include "qcloop.minio.scoped" .) (not $minio.users.existingSecret) -}}
{{- $names := list $minio.auth.rootUser -}}
{{- range $role := splitList " " (include "qcloop.minio.roles" .) -}}
{{- $user := index $minio.users $role -}}
{{- if not $user.secretKey -}}
{{- $errors = append $errors (printf "minio.users.%s.secretKey is required (or set minio.users.existingSecret, or minio.users.enabled=false to give every workload the root user): no default password is shipped" $role) -}}
{{- else if lt (len $user.secretKey) 8 -}}
{{- $errors = append $errors (printf "minio.users.%s.secretKey must have 8 characters at least (MinIO refuses shorter ones)" $role) -}}
{{- end -}}
{{- if has $user.accessKey $names -}}
{{- $errors = append $errors (printf "minio.users.%s.accessKey %s is already the root user or another role's user; each role needs its own" $role $user.accessKey) -}}
{{- end -}}
{{- $names = append $names $user.accessKey -}}
{{- end -}}
{{- end -}}
{{- if and (not $minio.enabled) $usesStore -}}
{{- if not .Values.externalS3.endpoint -}}
{{- $errors = append $errors "externalS3.endpoint is required when minio.enabled is false" -}}
{{- end -}}
{{- if not .Values.externalS3.existingSecret -}}
{{- $errors = append $errors "externalS3.existingSecret is required when minio.enabled is false" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.mlflow.enabled .Values.mlflow.artifacts.s3Endpoint (not .Values.mlflow.artifacts.existingSecret) -}}
{{- $errors = append $errors "mlflow.artifacts.existingSecret is required when mlflow.artifacts.s3Endpoint is set" -}}
{{- end -}}
{{- if and .Values.mlflow.enabled (eq .Values.mlflow.database.type "postgresql") -}}
{{- if not .Values.mlflow.database.host -}}
{{- $errors = append $errors "mlflow.database.host is required when mlflow.database.type is postgresql" -}}
{{- end -}}
{{- if not .Values.mlflow.database.existingSecret -}}
{{- $errors = append $errors "mlflow.database.existingSecret is required when mlflow.database.type is postgresql" -}}
{{- end -}}
{{- end -}}
{{- $mlAuth := .Values.mlflow.auth -}}
{{- if and .Values.mlflow.enabled $mlAuth.enabled (not $mlAuth.existingSecret) -}}
{{- range $field := list "adminPassword" "password" -}}
{{- $value := index $mlAuth $field -}}
{{- if not $value -}}
{{- $errors = append $errors (printf "mlflow.auth.%s is required when mlflow.auth.enabled is true (or set mlflow.auth.existingSecret): no default password is shipped" $field) -}}
{{- else if lt (len $value) 12 -}}
{{- $errors = append $errors (printf "mlflow.auth.%s must have 12 characters at least (MLflow refuses shorter ones)" $field) -}}
{{- end -}}
{{- end -}}
{{- if not $mlAuth.secretKey -}}
{{- $errors = append $errors "mlflow.auth.secretKey is required when mlflow.auth.enabled is true (or set mlflow.auth.existingSecret): the server's CSRF key, e.g. openssl rand -hex 24" -}}
{{- end -}}
{{- if eq $mlAuth.username $mlAuth.adminUsername -}}
{{- $errors = append $errors "mlflow.auth.username must differ from mlflow.auth.adminUsername: the platform's workloads never log in as the admin" -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.mlflow.enabled) $usesMlflow (not .Values.externalMlflow.trackingUri) -}}
{{- $errors = append $errors "externalMlflow.trackingUri is required when mlflow.enabled is false (the release bridge and the schedules use it)" -}}
{{- end -}}
{{- $mq := .Values.mosquitto -}}
{{- $auth := $mq.auth -}}
{{- if $mq.enabled -}}
{{- if and (not $auth.existingSecret) (not $auth.existingPasswordFileSecret) (not $auth.password) -}}
{{- $errors = append $errors "mosquitto.auth.password is required (or set mosquitto.auth.existingSecret or mosquitto.auth.existingPasswordFileSecret): no default password is shipped" -}}
{{- else if and .Values.releaseBridge.enabled (not $auth.existingSecret) (not $auth.password) -}}
{{- $errors = append $errors "mosquitto.auth.existingSecret (or mosquitto.auth.password) is required: the release bridge needs the plain MQTT credentials of mosquitto.auth.username" -}}
{{- end -}}
{{- if and (not $auth.existingPasswordFileSecret) (not $auth.devices.existingSecret) -}}
{{- range $id := splitList " " (include "qcloop.mosquitto.deviceIds" .) -}}
{{- if and $id (not (index $auth.devices.passwords $id)) -}}
{{- $errors = append $errors (printf "mosquitto.auth.devices.passwords.%s is required (device of mosquitto.fleets; or set mosquitto.auth.devices.existingSecret)" $id) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $mq.tls.enabled (not $mq.tls.existingSecret) -}}
{{- $errors = append $errors "mosquitto.tls.existingSecret is required when mosquitto.tls.enabled is true" -}}
{{- end -}}
{{- if and (include "qcloop.mosquitto.external" .) (not $mq.tls.enabled) -}}
{{- $errors = append $errors (printf "mosquitto.service.type=%s exposes the broker outside the cluster, which is allowed only over TLS: set mosquitto.tls.enabled=true and mosquitto.tls.existingSecret (edge boxes then use mqtts:// with mqtt.ca_file)" $mq.service.type) -}}
{{- end -}}
{{- if and (not $auth.existingPasswordFileSecret) (not $auth.operators.existingSecret) -}}
{{- range $id := splitList " " (include "qcloop.mosquitto.operatorIds" .) -}}
{{- if and $id (not (index $auth.operators.passwords $id)) -}}
{{- $errors = append $errors (printf "mosquitto.auth.operators.passwords.%s is required (operator of mosquitto.operators; or set mosquitto.auth.operators.existingSecret)" $id) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $devices := splitList " " (include "qcloop.mosquitto.deviceIds" .) -}}
{{- if has $auth.username $devices -}}
{{- $errors = append $errors (printf "mosquitto.fleets: device %s has the bridge's MQTT user name (mosquitto.auth.username); it would get the bridge's password and ACL: rename the device or the bridge's user" $auth.username) -}}
{{- end -}}
{{- range $id := splitList " " (include "qcloop.mosquitto.operatorIds" .) -}}
{{- if and $id (or (has $id $devices) (eq $id $auth.username)) -}}
{{- $errors = append $errors (printf "mosquitto.operators: %s is already a device or the bridge's user; an operator needs its own MQTT user" $id) -}}
{{- end -}}
{{- end -}}
{{- else if .Values.releaseBridge.enabled -}}
{{- if not .Values.externalBroker.url -}}
{{- $errors = append $errors "externalBroker.url is required when mosquitto.enabled is false (the release bridge publishes there)" -}}
{{- end -}}
{{- if not .Values.externalBroker.existingSecret -}}
{{- $errors = append $errors "externalBroker.existingSecret is required when mosquitto.enabled is false (the release bridge's MQTT user)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.releaseBridge.enabled (not .Values.releaseBridge.signingKey.existingSecret) -}}
{{- $errors = append $errors "releaseBridge.signingKey.existingSecret is required: a Secret with the Ed25519 release key (qcloop keys generate); the chart never makes one" -}}
{{- end -}}
{{- $ls := .Values.labelStudio -}}
{{- if $ls.enabled -}}
{{- if not $ls.admin.existingSecret -}}
{{- if not $ls.admin.password -}}
{{- $errors = append $errors "labelStudio.admin.password is required (or set labelStudio.admin.existingSecret): no default password is shipped" -}}
{{- end -}}
{{- if not $ls.admin.token -}}
{{- $errors = append $errors "labelStudio.admin.token is required (or set labelStudio.admin.existingSecret): no default token is shipped" -}}
{{- end -}}
{{- end -}}
{{- if eq $ls.database.type "postgresql" -}}
{{- if not $ls.database.host -}}
{{- $errors = append $errors "labelStudio.database.host is required when labelStudio.database.type is postgresql" -}}
{{- end -}}
{{- if not $ls.database.existingSecret -}}
{{- $errors = append $errors "labelStudio.database.existingSecret is required when labelStudio.database.type is postgresql" -}}
{{- end -}}
{{- end -}}
{{- else if .Values.schedules.labelling.enabled -}}
{{- if not .Values.externalLabelStudio.url -}}
{{- $errors = append $errors "externalLabelStudio.url is required when labelStudio.enabled is false (the labelling schedule uses it)" -}}
{{- end -}}
{{- if not .Values.externalLabelStudio.existingSecret -}}
{{- $errors = append $errors "externalLabelStudio.existingSecret is required when labelStudio.enabled is false (the labelling schedule uses it)" -}}
{{- end -}}
{{- end -}}
{{- with .Values.kfp.namespace -}}
{{- if not (has . $.Values.pipelines.namespaces) -}}
{{- $errors = append $errors (printf "kfp.namespace %s must be one of pipelines.namespaces (%s): the retraining runs execute there and read the ConfigMap and Secret qcloop-platform of that namespace" . (join ", " $.Values.pipelines.namespaces)) -}}
{{- end -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\nVALUES VALIDATION:\n  %s" (join "\n  " $errors)) -}}
{{- end -}}
{{- end -}}

{{/*
Egress rules of a pod that talks only to DNS, this release's pods, the allowed namespaces
and networkPolicy.egressCIDRs (networkPolicy.restrictEgress): a list of NetworkPolicy
egress rules, to be indented under `egress:`.
*/}}
{{- define "qcloop.egressToRelease" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ include "qcloop.name" . }}
          app.kubernetes.io/instance: {{ .Release.Name }}
    {{- range $ns := compact (splitList " " (include "qcloop.clientNamespaces" .)) }}
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ $ns }}
    {{- end }}
    {{- range $cidr := .Values.networkPolicy.egressCIDRs }}
    - ipBlock:
        cidr: {{ $cidr }}
    {{- end }}
{{- end }}
