/*
** handshake.h — making links: the initiator's handshake (blocking, run by
** the connecting thread) and the responder's (state machines over fixed
** slots, run by I/O thread 0). Private to kernel/net/: conn.c calls these;
** the bytes are in doc/handshake.md, the design in doc/netlink.md.
**
** Invariant (noise.h's): nothing is allocated for a peer, and nothing is
** done with the name it gives, before its confirmation frame decrypts.
** A link is installed in the node table, announced and handed to its I/O
** thread under its lock, so no sender writes before the handshake's last
** record and no record is read before the nodeup.
*/
#ifndef erlangen_handshake_h
#define erlangen_handshake_h

#include <stddef.h>
#include <stdint.h>
#include "conn_impl.h"

/* Connects to node `idx` and runs the initiator's side, waiting at most
** until `deadline`; on success the link is installed and attached (or a
** link the peer made meanwhile was kept). Returns 0, or -1 with a message
** in err; *refused is 1 when the peer kept a link of its own to this node.
** The caller holds the node's connect claim. */
int hs_initiate(uint32_t idx, double deadline, int *refused, char *err, size_t errlen);

/* The responder's slots: made by conn_start (0, or -1 when memory runs
** out), freed by conn_stop once the I/O threads have ended. */
int hs_start(void);
void hs_stop(void);

/* I/O thread 0 only, from here on. */

/* The listener is readable: takes the sockets waiting (a bounded number),
** each into a slot (hs_admit's eviction). Out of descriptors, it takes the
** listener out of t's epoll and sets conn_G.accept_paused. */
void hs_accept_all(io *t);

/* A slot's socket (tag) is readable: its next steps, as far as the bytes
** go; with running 0 the slot is dropped (a stopping node takes no link). */
void hs_ready(io_tag *tag, int running);

/* Drops the slots past their deadline; returns the earliest deadline left
** (INFINITY if none). */
double hs_expire(double now);

/* Drops every slot (a stopping I/O thread 0). */
void hs_drop_all(void);

#endif
