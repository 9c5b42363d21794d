/*
 * Header encoding for the federation link. Knows bytes and type numbers
 * only: no keys, no sockets, no JSON.
 */
#include "wire.h"

#include "err.h"

void mer_wire_put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t)(v & 0xff);
		v >>= 8;
	}
}

uint64_t mer_wire_get_u64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

void mer_wire_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

uint32_t mer_wire_get_u32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

void mer_wire_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

uint16_t mer_wire_get_u16(const uint8_t *p)
{
	return (uint16_t)(((unsigned)p[0] << 8) | p[1]);
}

const char *mer_wire_type_name(int type)
{
	switch (type) {
	case MER_WIRE_HELLO:
		return "hello";
	case MER_WIRE_WELCOME:
		return "welcome";
	case MER_WIRE_NOTICE:
		return "notice";
	case MER_WIRE_REPORT:
		return "report";
	case MER_WIRE_POLL:
		return "poll";
	case MER_WIRE_JOIN:
		return "join";
	case MER_WIRE_ACK:
		return "ack";
	case MER_WIRE_COMMANDS:
		return "commands";
	case MER_WIRE_ERROR:
		return "error";
	}
	return "unknown";
}

int mer_wire_type_sealed(int type)
{
	return type == MER_WIRE_REPORT || type == MER_WIRE_POLL ||
	       type == MER_WIRE_JOIN || type == MER_WIRE_ACK ||
	       type == MER_WIRE_COMMANDS || type == MER_WIRE_ERROR;
}

void mer_wire_hdr_encode(const struct mer_wire_hdr *h,
			 uint8_t out[MER_WIRE_HDR_LEN])
{
	out[0] = MER_WIRE_MAGIC0;
	out[1] = MER_WIRE_MAGIC1;
	out[2] = MER_WIRE_VERSION;
	out[3] = h->type;
	mer_wire_put_u64(out + 4, h->session);
	mer_wire_put_u64(out + 12, h->counter);
}

int mer_wire_hdr_decode(const uint8_t *buf, size_t len, struct mer_wire_hdr *h)
{
	if (!buf || len < MER_WIRE_HDR_LEN || buf[0] != MER_WIRE_MAGIC0 ||
	    buf[1] != MER_WIRE_MAGIC1)
		return MER_EPARSE;
	h->version = buf[2];
	h->type = buf[3];
	h->session = mer_wire_get_u64(buf + 4);
	h->counter = mer_wire_get_u64(buf + 12);
	if (h->version != MER_WIRE_VERSION)
		return MER_EUNSUPPORTED;
	if (!mer_wire_type_sealed(h->type) && h->type != MER_WIRE_HELLO &&
	    h->type != MER_WIRE_WELCOME && h->type != MER_WIRE_NOTICE)
		return MER_EPARSE;
	return 0;
}
