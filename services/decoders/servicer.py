"""gRPC adapter of `DecoderCore`: proto -> core types -> decode -> proto. Errors map in the interceptor."""

from __future__ import annotations

import grpc

from nextgpt._proto import decoder_pb2, decoder_pb2_grpc
from nextgpt.errors import InvalidInput
from services.common.convert import decode_options_from_proto, media_modality_from_proto, media_to_proto
from services.common.tensors import from_proto
from services.decoders.core import DecoderCore


class DecoderServicer(decoder_pb2_grpc.DecoderServiceServicer):
    def __init__(self, core: DecoderCore) -> None:
        self.core = core

    async def Decode(  # noqa: N802 (gRPC method name)
        self, request: decoder_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> decoder_pb2.DecodeResponse:
        modality = media_modality_from_proto(request.modality, "modality")
        if modality != self.core.modality:
            raise InvalidInput(
                f"modality={modality} sent to the {self.core.modality} decoder; send {modality} spans to the "
                f"{modality} decoder service"
            )
        hidden = from_proto(request.hidden, "hidden")
        token_embeds = from_proto(request.token_embeds, "token_embeds")
        options = decode_options_from_proto(request.options)
        seed = request.seed if request.HasField("seed") else None
        media, batch_size = await self.core.decode(hidden, token_embeds, options, seed)
        return decoder_pb2.DecodeResponse(media=media_to_proto(media), batch_size=batch_size)
