//! A sandbox's pod network through CNI: `lo` up, then the node's network
//! configuration attached as `eth0`, hostPorts included; torn down with the
//! configuration cached at attach time.

use super::record::SandboxRecord;
use super::{SandboxError, Sandboxes};
use crate::network::{NetworkConfig, PodNetworkRequest, PortMapping, Protocol};

/// The pod's interface.
const POD_IFNAME: &str = "eth0";

impl Sandboxes {
    fn network_request(&self, record: &SandboxRecord) -> PodNetworkRequest {
        PodNetworkRequest {
            container_id: record.id.clone(),
            netns_path: record.netns().unwrap_or_default(),
            ifname: POD_IFNAME.into(),
            pod_namespace: record.metadata.namespace.clone(),
            pod_name: record.metadata.name.clone(),
            pod_uid: record.metadata.uid.clone(),
            port_mappings: record
                .port_mappings
                .iter()
                .filter(|pm| pm.host_port != 0)
                .map(|pm| PortMapping {
                    host_port: pm.host_port,
                    container_port: pm.container_port,
                    protocol: match pm.protocol.as_str() {
                        "udp" => Protocol::Udp,
                        "sctp" => Protocol::Sctp,
                        _ => Protocol::Tcp,
                    },
                    host_ip: pm.host_ip.parse().ok(),
                })
                .collect(),
            bandwidth: None,
            dns: None,
        }
    }

    fn network_config(&self) -> Result<NetworkConfig, SandboxError> {
        NetworkConfig::load(&self.config.cni.conf_dir, &self.config.cni.bin_dirs)
            .map_err(|e| SandboxError::Network(e.to_string()))
    }

    /// Brings the pod's network up; returns its IPs, IPv4 first.
    pub(super) async fn attach_network(
        &self,
        record: &SandboxRecord,
    ) -> Result<Vec<String>, SandboxError> {
        let network = self.network_config()?;
        let request = self.network_request(record);
        self.cni
            .loopback_up(&record.id, &request.netns_path)
            .await
            .map_err(|e| SandboxError::Network(e.to_string()))?;
        let result = self
            .cni
            .add(&network, &request)
            .await
            .map_err(|e| SandboxError::Network(e.to_string()))?;
        let mut ips = result.pod_ips(POD_IFNAME);
        ips.sort_by_key(|ip| ip.is_ipv6());
        Ok(ips.iter().map(ToString::to_string).collect())
    }

    /// Tears the pod's network down (CNI DEL with the cached config, or the
    /// current one when nothing is cached). Idempotent.
    pub(super) async fn detach_network(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        let network = self.network_config().ok();
        let mut request = self.network_request(record);
        if !request.netns_path.exists() {
            request.netns_path = Default::default();
        }
        self.cni
            .del(network.as_ref(), &request)
            .await
            .map_err(|e| SandboxError::Network(e.to_string()))
    }
}
