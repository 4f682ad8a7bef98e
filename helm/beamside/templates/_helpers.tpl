{{/* Names: every object is "<fullname>-<component>", from here only. */}}
{{- define "beamside.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- define "beamside.name" -}}
{{- printf "%s-%s" (include "beamside.fullname" .root) .component -}}
{{- end -}}

{{/* Labels: selectors use name, instance and component only (they never change on upgrade). */}}
{{- define "beamside.selector" -}}
{{- if eq .component "singleuser" -}}
{{- /* User pods: KubeSpawner writes its own app.kubernetes.io/name and /component over extra_labels,
       so policies select them by labels of beamside's own that it leaves alone. */ -}}
beamside.org/instance: {{ .root.Release.Name }}
beamside.org/component: singleuser
{{- else -}}
app.kubernetes.io/name: beamside
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{- end -}}
{{- define "beamside.labels" -}}
{{ include "beamside.selector" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "beamside.image" -}}
{{ .name }}:{{ .tag }}
{{- end -}}

{{/* The hardened container securityContext of the chart's own pods. */}}
{{- define "beamside.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- define "beamside.podSecurity" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* The Secret holding the hub's tokens and keys: the admin's (hub.existing_secret) or the chart's. */}}
{{- define "beamside.secretName" -}}
{{- .Values.hub.existing_secret | default (include "beamside.name" (dict "root" . "component" "hub")) -}}
{{- end -}}

{{/* Which keys of that Secret each pod sees (as files in /etc/beamside/secrets, or the proxy's env):
     only what its process uses. Defined here once; hub/secret.yaml generates every key named here. */}}
{{- define "beamside.secretKeys" -}}
{{- $keys := dict
  "hub" (list "proxy_token" "gateway_token" "supervisor_token" "crypt_key" "cookie_secret")
  "proxy" (list "proxy_token")
  "gateway-api" (list "gateway_token" "gateway_proxy_token")
  "gateway" (list "gateway_proxy_token")
  "gateway-controller" (list) -}}
{{- if eq .component "all" -}}
{{- $all := list -}}
{{- range $keys }}{{ $all = concat $all . }}{{ end -}}
{{- $all | uniq | sortAlpha | toJson -}}
{{- else -}}
{{- get $keys .component | toJson -}}
{{- end -}}
{{- end -}}

{{/* Where the hub's configuration files appear in the hub and gateway containers (dict root, component). */}}
{{- define "beamside.configMounts" -}}
- {name: runtime, mountPath: /etc/beamside/runtime, readOnly: true}
{{- if include "beamside.secretKeys" . | fromJsonArray }}
- {name: secrets, mountPath: /etc/beamside/secrets, readOnly: true}
{{- end }}
- {name: catalog, mountPath: /etc/beamside/catalog, readOnly: true}
{{- end -}}
{{- define "beamside.configVolumes" -}}
{{- $root := .root -}}
{{- $keys := include "beamside.secretKeys" . | fromJsonArray -}}
- name: runtime
  configMap: {name: {{ include "beamside.name" (dict "root" $root "component" "hub") }}}
{{- if $keys }}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "beamside.secretName" $root }}
          items:
            {{- range $keys }}
            - {key: {{ . }}, path: {{ . }}}
            {{- end }}
      {{- if and (eq .component "hub") (eq $root.Values.auth.type "oidc") $root.Values.auth.oidc.existing_secret }}
      - secret:
          name: {{ $root.Values.auth.oidc.existing_secret }}
          items: [{key: {{ $root.Values.auth.oidc.secret_key }}, path: oidc_client_secret}]
      {{- end }}
{{- end }}
- name: catalog
  {{- with $root.Values.data.catalog }}
  {{- if .existing_config_map }}
  configMap: {name: {{ .existing_config_map }}, items: [{key: {{ .key }}, path: catalog.yaml}]}
  {{- else if .existing_secret }}
  secret: {secretName: {{ .existing_secret }}, items: [{key: {{ .key }}, path: catalog.yaml}]}
  {{- else }}
  configMap: {name: {{ include "beamside.name" (dict "root" $root "component" "catalog") }}}
  {{- end }}
  {{- end }}
{{- end -}}
{{- define "beamside.configEnv" -}}
- {name: BEAMSIDE_HELM_VALUES, value: /etc/beamside/runtime/values.yaml}
{{- end -}}

{{/* Restart pods whose configuration changed. */}}
{{- define "beamside.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/hub/configmap.yaml") . | sha256sum }}
checksum/catalog: {{ include (print .Template.BasePath "/hub/catalog.yaml") . | sha256sum }}
{{- end -}}

{{/* DNS only: the cluster's DNS pods, port 53. */}}
{{- define "beamside.dnsEgress" -}}
- ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
  to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
{{- end -}}
