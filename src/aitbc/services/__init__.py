"""Use cases. Each public function owns its transaction and returns a wire schema."""
