//! ImageService: pulling, listing, inspecting and removing images.

use std::collections::HashMap;

use berth_cri_proto::v1::image_service_server::ImageService;
use berth_cri_proto::v1::*;
use tonic::{Request, Response, Status};

use super::{ImageApi, IntoStatus, ReplyStream, traced};
use crate::image::{ImageRecord, ImageUser};
use crate::registry::Credentials;

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image);
        traced("ListImages", async {
            let images = self.daemon.images().list(filter.as_deref());
            Ok(ListImagesResponse {
                images: images.iter().map(image).collect(),
            })
        })
        .await
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        traced("ImageStatus", async {
            let spec = image_name(request.image.as_ref())?;
            let Some(record) = self.daemon.images().status(spec) else {
                return Ok(ImageStatusResponse::default());
            };
            let mut info = HashMap::new();
            if request.verbose {
                info.insert("info".to_string(), verbose_info(&record));
            }
            Ok(ImageStatusResponse {
                image: Some(image(&record)),
                info,
            })
        })
        .await
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        traced("PullImage", async {
            let name = image_name(request.image.as_ref())?;
            let credentials = request.auth.map(|a| Credentials {
                username: a.username,
                password: a.password,
                auth: a.auth,
                identity_token: a.identity_token,
                registry_token: a.registry_token,
            });
            let pulled = self
                .daemon
                .images()
                .pull(name, credentials.as_ref())
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(PullImageResponse {
                image_ref: pulled.image.id.to_string(),
            })
        })
        .await
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let request = request.into_inner();
        traced("RemoveImage", async {
            let spec = image_name(request.image.as_ref())?;
            self.daemon
                .remove_image(spec)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        traced("ImageFsInfo", async {
            let fs = self
                .daemon
                .images()
                .fs_usage()
                .await
                .map_err(IntoStatus::into_status)?;
            let usage = FilesystemUsage {
                timestamp: crate::clock::now_nanos(),
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: fs.mountpoint.display().to_string(),
                }),
                used_bytes: Some(UInt64Value {
                    value: fs.usage.bytes,
                }),
                inodes_used: Some(UInt64Value {
                    value: fs.usage.inodes,
                }),
            };
            Ok(ImageFsInfoResponse {
                image_filesystems: vec![usage.clone()],
                container_filesystems: vec![usage],
            })
        })
        .await
    }

    type StreamImagesStream = ReplyStream<StreamImagesResponse>;
    async fn stream_images(
        &self,
        request: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image);
        traced("StreamImages", async {
            let images: Vec<_> = self
                .daemon
                .images()
                .list(filter.as_deref())
                .iter()
                .map(image)
                .collect();
            Ok(super::batches(images, |images| StreamImagesResponse {
                images,
            }))
        })
        .await
    }
}

/// The image name of a request's ImageSpec; missing or empty is an error
/// naming the field.
fn image_name(spec: Option<&ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Status::invalid_argument(
            "image.image: the image name is empty",
        )),
    }
}

fn image(record: &ImageRecord) -> Image {
    let (uid, username) = match record.config.image_user() {
        Some(ImageUser::Uid(uid)) => (Some(Int64Value { value: uid }), String::new()),
        Some(ImageUser::Name(name)) => (None, name),
        None => (None, String::new()),
    };
    Image {
        id: record.id.to_string(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: record.id.to_string(),
            ..Default::default()
        }),
        pinned: record.pinned,
    }
}

fn verbose_info(record: &ImageRecord) -> String {
    serde_json::json!({
        "id": record.id,
        "manifest": record.manifest,
        "chainIDs": record.chain_ids,
        "blobs": record.blobs,
        "size": record.size,
        "pulledAt": record.pulled_at,
        "config": record.config,
    })
    .to_string()
}
