-- A conflict a reviewer decided and no run has applied yet keeps its
-- record waiting, as a pending one does (`open_conflicts`, every page of
-- every step). These partial indexes hold just those, as the pending
-- ones' do: the conflicts a strategy settled, kept as history, are in
-- neither.
CREATE INDEX conflicts_decided_by_source ON conflicts (tenant_id, integration_id, entity_type, source_id)
    WHERE status = 'resolved' AND resolved_by <> 'system' AND applied_at IS NULL;
CREATE INDEX conflicts_decided_by_target ON conflicts (tenant_id, integration_id, entity_type, target_id)
    WHERE status = 'resolved' AND resolved_by <> 'system' AND applied_at IS NULL;
