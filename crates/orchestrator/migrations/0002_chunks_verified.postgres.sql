-- TrackShift orchestrator, schema version 2 (postgres): each session keeps its count of verified chunks, so a chunk
-- update checks completion against it instead of counting the session's chunk rows again (O(chunks) per
-- update). Filled from the chunk rows once here.
ALTER TABLE sessions ADD COLUMN chunks_verified BIGINT NOT NULL DEFAULT 0;
UPDATE sessions SET chunks_verified =
    (SELECT COUNT(*) FROM chunks WHERE chunks.session_id = sessions.session_id AND chunks.status = 'verified');
