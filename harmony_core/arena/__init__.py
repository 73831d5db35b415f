"""The blind preference study: the organizer's study set, the vote store and the statistics."""
