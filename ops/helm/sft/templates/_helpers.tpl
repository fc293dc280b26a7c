{{- /* The release name when it already says "sft" (helm install sft: pods
sft-0, sft-1, ...), else <release>-sft. */ -}}
{{- define "sft.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sft.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sft.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* Replica i's signalling host: <hostPrefix>-<i>.<baseDomain>. */ -}}
{{- define "sft.replicaHost" -}}
{{- with .root.Values.signalling.ingress -}}
{{- printf "%s-%d.%s" .hostPrefix $.replica .baseDomain -}}
{{- end -}}
{{- end -}}

{{- /* Values that would render a chart whose SFTs announce addresses
clients or peers cannot reach: refuse them at render time. */ -}}
{{- define "sft.checks" -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if and (not .Values.media.hostNetwork) (gt $replicas 1) -}}
{{- fail "media.hostNetwork=false runs one replica only: the media Service spreads UDP over every pod, and media.publicIP is one address" -}}
{{- end -}}
{{- if and (not .Values.media.hostNetwork) (not .Values.media.publicIP) -}}
{{- fail "media.publicIP is required with media.hostNetwork=false: set it to the media Service's load balancer address" -}}
{{- end -}}
{{- if and .Values.media.publicIP (gt $replicas 1) -}}
{{- fail "media.publicIP names one address for every replica: leave it empty, each SFT then announces its node's IP" -}}
{{- end -}}
{{- if .Values.federation.enabled -}}
{{- if and .Values.federation.relayPublic (gt $replicas 1) -}}
{{- fail "federation.relayPublic names one relay for every replica: leave it empty, each SFT then announces its node's IP" -}}
{{- end -}}
{{- if and (not .Values.media.hostNetwork) (not .Values.federation.relayPublic) -}}
{{- fail "federation.relayPublic is required with media.hostNetwork=false: the load balancer's address and relayPort" -}}
{{- end -}}
{{- end -}}
{{- end -}}
