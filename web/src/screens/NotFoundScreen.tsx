import { Link } from "../navigation.tsx";
import { EmptyState } from "../components/ui.tsx";

export function NotFoundScreen() {
  return (
    <div className="screen screen-narrow">
      <EmptyState title="There is no page here." testId="not-found">
        <Link to="/products">Go to the products</Link>
      </EmptyState>
    </div>
  );
}
