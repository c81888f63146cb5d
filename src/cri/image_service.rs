//! ImageService: pulling, listing, inspecting and removing images.

use berth_cri_proto::v1::image_service_server::ImageService;
use berth_cri_proto::v1::*;
use tonic::{Request, Response, Status};

use super::{ImageApi, ReplyStream, traced, unimplemented};

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        traced("ListImages", async { Err(unimplemented("ListImages")) }).await
    }

    type StreamImagesStream = ReplyStream<StreamImagesResponse>;

    async fn stream_images(
        &self,
        _: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        traced("StreamImages", async { Err(unimplemented("StreamImages")) }).await
    }

    async fn image_status(
        &self,
        _: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        traced("ImageStatus", async { Err(unimplemented("ImageStatus")) }).await
    }

    async fn pull_image(
        &self,
        _: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        traced("PullImage", async { Err(unimplemented("PullImage")) }).await
    }

    async fn remove_image(
        &self,
        _: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        traced("RemoveImage", async { Err(unimplemented("RemoveImage")) }).await
    }

    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        traced("ImageFsInfo", async { Err(unimplemented("ImageFsInfo")) }).await
    }
}
